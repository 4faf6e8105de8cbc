"""What must never reach a log line: tokens (whole, or their signature alone), keys and
certificates."""

from __future__ import annotations

import re

JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")


FORBIDDEN = ("PRIVATE KEY", "BEGIN CERTIFICATE")


def leaks(text: str, tokens: set[str]) -> list[str]:
    found = [t[:20] + "..." for t in tokens if t in text]
    found += [m.group(0)[:20] + "..." for m in JWT_SHAPE.finditer(text)]
    # A token's signature alone is as good as a fingerprint of the token.
    found += [t[:10] + "...sig" for t in tokens if t.rsplit(".", 1)[-1] in text]
    found += [f for f in FORBIDDEN if f in text]
    return found

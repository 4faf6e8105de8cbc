"""forwarding.claim_headers: claims the workload needs, as header lines rendered once per
verified token (the lines ride in TokenClaims, so a cached token costs nothing more). Pure.

A value is encoded like the identity headers: text outside printable ASCII is percent-encoded,
so a claim cannot inject a header line; lists are joined with ", " (a comma inside an item is
encoded); an object, or a list inside a list, is compact JSON. A value longer than
MAX_VALUE_BYTES once encoded is not sent at all: cutting it could turn `admin-readonly` into
`admin`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from proxy.headers import DROPPED_FROM_REQUEST, IDENTITY_PREFIX, header_value

log = logging.getLogger("certbound.claim_headers")

MAX_VALUE_BYTES = 8192
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}")  # RFC 9110 §5.6.2 field-name
# Headers whose meaning the proxy or HTTP owns; a claim must not speak for them.
_RESERVED = frozenset(n.decode() for n in DROPPED_FROM_REQUEST) | {
    "host",
    "authorization",
    "cookie",
}

ClaimHeaderSpec = tuple[tuple[str, str], ...]  # (header name, claim path), as configured


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be a claim header, or None."""
    if _TOKEN.fullmatch(name) is None:
        return "not an HTTP header name (RFC 9110 §5.6.2 token, at most 100 characters)"
    lower = name.lower()
    if lower.encode().startswith(IDENTITY_PREFIX):
        return "X-Certbound-* names are the proxy's own identity headers"
    if lower in _RESERVED:
        return f"{name} is owned by HTTP or by the proxy"
    return None


def claim_path_problem(path: str) -> str | None:
    if not path or any(not part for part in path.split(".")):
        return f"{path!r} is not a claim path (claim names joined by '.', e.g. realm_access.roles)"
    return None


def claim_value(payload: Mapping[str, Any], path: str) -> object:
    """The claim at `path`: a top-level claim of that exact name first (names such as
    `https://example.com/roles` contain dots), else the dotted path through objects."""
    if path in payload:
        return payload[path]
    node: object = payload
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def encode_value(value: object) -> str | None:
    """Header text for a claim value; None when there is nothing to send."""
    if value is None:
        return None
    if isinstance(value, list):
        items = [_item(v) for v in value if v is not None]
        return ", ".join(items) if items else None
    return _item(value)


def _item(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return header_value(value).replace(",", "%2C")
    if isinstance(value, int | float):
        return json.dumps(value)
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return header_value(text).replace(",", "%2C")


def render_claim_headers(spec: ClaimHeaderSpec, payload: Mapping[str, Any]) -> bytes:
    """The header lines for one verified token (empty when no claim is configured)."""
    lines = []
    for name, path in spec:
        text = encode_value(claim_value(payload, path))
        if text is None:
            continue
        if len(text) > MAX_VALUE_BYTES:
            log.warning(
                "claim %s is %d bytes once encoded (over %d): %s not sent",
                path,
                len(text),
                MAX_VALUE_BYTES,
                name,
            )
            continue
        lines.append(f"{name}: {text}\r\n")
    return "".join(lines).encode("ascii")


def claim_header_names(spec: ClaimHeaderSpec) -> frozenset[bytes]:
    """Lower-case names whose client copies are dropped before the request goes on."""
    return frozenset(name.lower().encode("ascii") for name, _ in spec)

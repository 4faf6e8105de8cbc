"""Does the token name the certificate on this connection? RFC 8705 §3. Pure; no I/O."""

from __future__ import annotations

import hmac
import re

from proxy.errors import AuthError, Reason

# A SHA-256 digest in base64url without padding is exactly 43 characters of this alphabet.
# Anything else (padding, the standard alphabet, whitespace) is not a thumbprint we could match.
THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")


def check_binding(cnf: object, thumbprint: str, *, allow_unbound: bool = False) -> bool:
    """Raise AuthError unless `cnf` binds the token to `thumbprint`.

    Returns True when the token is bound, False when it is unbound and that was allowed.
    """
    if cnf is None:
        if allow_unbound:
            return False
        raise AuthError(Reason.MISSING_CNF, "token is not bound to a certificate (no cnf claim)")
    if not isinstance(cnf, dict):
        raise AuthError(Reason.INVALID_CNF, "cnf claim is not a JSON object")
    expected = cnf.get("x5t#S256")
    if expected is None:
        if allow_unbound:
            return False
        raise AuthError(Reason.MISSING_CNF, "cnf claim has no x5t#S256 member")
    if not isinstance(expected, str) or THUMBPRINT.fullmatch(expected) is None:
        raise AuthError(Reason.INVALID_CNF, "cnf x5t#S256 is not a base64url SHA-256 thumbprint")
    # Constant time, so response timing does not reveal how much of a guess was right.
    if not hmac.compare_digest(expected.encode("ascii"), thumbprint.encode("ascii")):
        raise AuthError(
            Reason.THUMBPRINT_MISMATCH, "token is bound to a different client certificate"
        )
    return True

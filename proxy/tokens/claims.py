"""What a verified token says, as one immutable value, and the rules on claims that need no
key: the token's id for logs, and its lifetime (tokens.max_lifetime_seconds). Pure."""

from __future__ import annotations

from typing import Any, NamedTuple

from proxy.errors import AuthError, Reason


class TokenClaims(NamedTuple):
    """Immutable; a tuple because a token-cache miss builds one (a frozen dataclass costs
    1.5 µs to build, this a quarter of that)."""

    issuer: str
    subject: str
    client_id: str
    scope: str
    jti: str
    expires_at: float
    not_before: float
    cnf: object  # raw claim; binding.py decides what it means
    issuer_name: str = ""  # the configured issuer that verified it (name, else index)
    token_id: str = ""  # jti, else a short hash of the token: what logs call it
    claim_headers: bytes = b""  # forwarding.claim_headers lines, rendered at verification


def claims_from_payload(
    payload: dict[str, Any],
    *,
    issuer_name: str = "",
    token_id: str = "",
    claim_headers: bytes = b"",
) -> TokenClaims:
    get = payload.get
    scope = get("scope", get("scp", ""))
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    client_id = get("client_id", get("azp", ""))
    return TokenClaims(
        str(get("iss", "")),
        str(get("sub", "")),
        str(client_id),
        str(scope),
        str(get("jti", "")),
        float(payload["exp"]),
        float(get("nbf", 0)),
        get("cnf"),
        issuer_name,
        token_id,
        claim_headers,
    )


def token_id(jti: object, digest: bytes) -> str:
    """The token's name in audit lines: its jti, else the first 64 bits of its SHA-256 (the
    digest the caches use). Enough to correlate presentations; never the token itself."""
    if isinstance(jti, str) and jti:
        return jti[:128]
    return "sha256:" + digest[:8].hex()


def check_lifetime(
    expires_at: float, issued_at: object, now: float, max_lifetime: int, leeway: int
) -> None:
    """OWASP NHI-07: refuse tokens issued for longer than max_lifetime seconds (0: off).
    exp - iat is the issuer's own arithmetic, so no leeway; without iat, what is left of
    the token (exp - now) is judged, with leeway for the issuer's clock."""
    if max_lifetime <= 0:
        return
    if isinstance(issued_at, int | float) and not isinstance(issued_at, bool):
        too_long = expires_at - float(issued_at) > max_lifetime
    else:
        too_long = expires_at - now > max_lifetime + leeway
    if too_long:
        raise AuthError(
            Reason.LIFETIME_TOO_LONG,
            f"token lifetime is over the {max_lifetime} seconds this service accepts",
        )

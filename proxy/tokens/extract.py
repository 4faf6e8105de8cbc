"""Authorization header -> raw token, or a refusal. Pure; RFC 6750 §2.1 and RFC 9449 §7.1.

A token in the query string (RFC 6750 §2.3) is refused: it ends up in access logs and browser
history. A form body (§2.2) is never read for one: bodies stream to the workload unread, so an
`access_token` form field is just data, and a request with no Authorization has no token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from proxy.errors import AuthError, Reason

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Enterprise identity providers put large group lists in tokens (12 KB claims are common);
# listen.max_header_bytes bounds the whole head before this is reached with its default.
MAX_TOKEN_LENGTH = 65536


def extract_bearer(authorization: list[str], query_keys: Iterable[str]) -> str:
    """Return the bearer token from the request's Authorization header values."""
    token, is_dpop = extract_credentials(authorization, query_keys)
    if is_dpop:
        raise AuthError(Reason.MALFORMED_REQUEST, "Authorization scheme must be Bearer")
    return token


def extract_credentials(authorization: list[str], query_keys: Iterable[str]) -> tuple[str, bool]:
    """(token, is_dpop): the token of a Bearer or DPoP (RFC 9449 §7.1) Authorization value.
    Which scheme a token needs is decided with its cnf claim, not here."""
    if "access_token" in query_keys:
        raise AuthError(
            Reason.MALFORMED_REQUEST, "access tokens in the query string are not accepted"
        )
    if not authorization:
        raise AuthError(Reason.NO_TOKEN, "no access token")
    if len(authorization) > 1:
        raise AuthError(Reason.MALFORMED_REQUEST, "more than one Authorization header")
    value = authorization[0]
    scheme, _, credentials = value.partition(" ")
    # RFC 9110 §11.1: the auth-scheme is case-insensitive, so "bearer" is accepted.
    is_dpop = scheme.lower() == "dpop"
    if scheme.lower() != "bearer" and not is_dpop:
        raise AuthError(Reason.MALFORMED_REQUEST, "Authorization scheme must be Bearer or DPoP")
    credentials = credentials.lstrip(" ")
    if not credentials:
        raise AuthError(Reason.MALFORMED_REQUEST, "empty bearer token")
    if len(credentials) > MAX_TOKEN_LENGTH:
        raise AuthError(Reason.MALFORMED_REQUEST, "bearer token too long")
    if _B64TOKEN.fullmatch(credentials) is None:
        raise AuthError(Reason.MALFORMED_REQUEST, "bearer token has characters outside b64token")
    return credentials, is_dpop

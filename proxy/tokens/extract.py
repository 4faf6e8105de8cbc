"""Authorization header -> raw bearer token, or a refusal. Pure; RFC 6750 §2.1 only.

Tokens in the query string or a form body (RFC 6750 §2.2, §2.3) are refused: they end up in
access logs and browser history, and accepting two methods invites ambiguity (§3.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from proxy.errors import AuthError, Reason

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 8192


def extract_bearer(authorization: list[str], query_keys: Iterable[str]) -> str:
    """Return the bearer token from the request's Authorization header values."""
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
    if scheme.lower() != "bearer":
        raise AuthError(Reason.MALFORMED_REQUEST, "Authorization scheme must be Bearer")
    credentials = credentials.lstrip(" ")
    if not credentials:
        raise AuthError(Reason.MALFORMED_REQUEST, "empty bearer token")
    if len(credentials) > MAX_TOKEN_LENGTH:
        raise AuthError(Reason.MALFORMED_REQUEST, "bearer token too long")
    if _B64TOKEN.fullmatch(credentials) is None:
        raise AuthError(Reason.MALFORMED_REQUEST, "bearer token has characters outside b64token")
    return credentials


def form_has_token(body: bytes) -> bool:
    """True if an application/x-www-form-urlencoded body carries an access_token field."""
    pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
    return any(name == "access_token" for name, _ in pairs)

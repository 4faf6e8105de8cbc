"""Reading a compact JWS before its signature is checked: its header (which algorithm, which
key) and, for access tokens, its payload (which issuer). Pure.

Only a read, to choose the rules and the key. PyJWT's judges then verify it: for an access
token, its signature and claims as read here (tokens/signature.py, which sends any token PyJWT
would spell differently to jwt.decode whole); for a DPoP proof, jwt.decode. Nothing read here
is trusted before that. Reading it once, at C speed, replaces the full PyJWT parses that check
the base64url alphabet one character at a time in Python (most of a token's cost after its
signature).
"""

from __future__ import annotations

import binascii
import json
from typing import Any

# RFC 7515 §7.1: three base64url parts without padding (the header and payload not empty).
# Anything else (padding, the standard alphabet) may decode to the same bytes, but one token
# must have one spelling, or the same token could be replayed under a different cache key and
# log fingerprint. Checked by deleting every allowed byte in one C pass (a third of a regular
# expression's cost on an access token): what is left must be nothing.
_COMPACT_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
_DECODER = json.JSONDecoder()
# Header segments read before, with what they say: an issuer signs every token with one of a
# few headers (alg, kid, typ), and a DPoP client every proof with one, so a token's header
# costs a lookup, not a base64 and JSON decode. Short segments only, and a bounded number
# (cleared when full), so that a flood of invented headers holds at most 256 KB.
_headers: dict[bytes, dict[str, Any]] = {}
HEADERS_KEPT = 256
HEADER_KEPT_BYTES = 1024
# JWK members that are private key material (RFC 7518 §6): a header whose `jwk` has one is
# refused by DPoP, and is not kept here either.
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class Unreadable(ValueError):
    """Not a compact JWS whose header and payload are JSON objects."""


def _json(raw: bytes) -> Any:
    """json.loads(raw), as PyJWT calls it. An object whose first two bytes are `{` and not NUL
    is UTF-8 to json.loads' encoding sniffing too; decoding it here skips the sniffing and the
    whitespace scan, and anything else (trailing whitespace, an error) goes to json.loads."""
    if raw[:1] == b"{" and raw[1:2] not in (b"", b"\x00"):
        text = raw.decode("utf-8", "surrogatepass")  # as json.loads decodes UTF-8
        value, end = _DECODER.raw_decode(text)
        if end == len(text):
            return value
    return json.loads(raw)


def _segment(part: bytes) -> dict[str, Any]:
    if len(part) % 4 == 1:  # no byte string encodes to this length
        raise Unreadable
    try:
        raw = binascii.a2b_base64(part.translate(_STANDARD_ALPHABET) + b"=" * (-len(part) % 4))
        value = _json(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise Unreadable from None
    if not isinstance(value, dict):
        raise Unreadable
    return value


def _holds_no_private_key(header: dict[str, Any]) -> bool:
    jwk = header.get("jwk")
    return not isinstance(jwk, dict) or _PRIVATE_JWK_MEMBERS.isdisjoint(jwk)


def is_compact(token: str) -> bool:
    """Whether `token` has only the characters of a compact JWS: base64url and dots."""
    return token.isascii() and not token.encode("ascii").translate(None, _COMPACT_BYTES)


def read(token: str, *, payload: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a compact JWS, unverified; the payload is {} when not asked for.
    The header may be the very dictionary an earlier call returned: read it, never change
    it. Raises Unreadable."""
    head, body = _segments(token)
    header = _headers.get(head)
    if header is None:
        header = _segment(head)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):  # as PyJWT's header rules have it
            raise Unreadable
        if len(head) <= HEADER_KEPT_BYTES and _holds_no_private_key(header):
            if len(_headers) >= HEADERS_KEPT:
                _headers.clear()
            _headers[head] = header
    return header, (_segment(body) if payload else {})


def read_payload(token: str) -> tuple[str, dict[str, Any]]:
    """(header segment as sent, payload) of a compact JWS, unverified, for a caller that knows
    the header by its segment already (DPoP proofs: a client sends the same header every time).
    The same checks as read(), but the header is not decoded. Raises Unreadable."""
    head, body = _segments(token)
    return head.decode("ascii"), _segment(body)


def _segments(token: str) -> tuple[bytes, bytes]:
    """The header and payload segments of a compact JWS: three parts of base64url, the first
    two not empty. Raises Unreadable."""
    if not token.isascii():
        raise Unreadable
    raw = token.encode("ascii")
    parts = raw.split(b".")
    if len(parts) != 3 or raw.translate(None, _COMPACT_BYTES):
        raise Unreadable
    head, body, _ = parts
    if not head or not body:
        raise Unreadable
    return head, body

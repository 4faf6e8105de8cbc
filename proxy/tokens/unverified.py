"""Reading a compact JWS before its signature is checked: its header (which algorithm, which
key) and, for access tokens, its payload (which issuer). Pure.

Only a read, to choose the rules and the key. PyJWT then parses and verifies the whole token
itself (signature, header against the allowed algorithms, every claim), so nothing read here is
trusted: a token whose bytes PyJWT reads differently fails its verification. Reading it once
here, at C speed, replaces two more full PyJWT parses per verification, each of which checks
the base64url alphabet one character at a time in Python (most of a DPoP proof's cost).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

# RFC 7515 §7.1: three base64url parts without padding. Anything else (padding, the standard
# alphabet) may decode to the same bytes, but one token must have one spelling, or the same
# token could be replayed under a different cache key and log fingerprint.
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class Unreadable(ValueError):
    """Not a compact JWS whose header and payload are JSON objects."""


def _segment(part: str) -> dict[str, Any]:
    if len(part) % 4 == 1:  # no byte string encodes to this length
        raise Unreadable
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise Unreadable from None
    if not isinstance(value, dict):
        raise Unreadable
    return value


def read(token: str, *, payload: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a compact JWS, unverified; the payload is {} when not asked for.
    Raises Unreadable."""
    if COMPACT_JWS.fullmatch(token) is None:
        raise Unreadable
    head, body, _ = token.split(".")
    header = _segment(head)
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):  # as PyJWT's header rules have it
        raise Unreadable
    return header, (_segment(body) if payload else {})

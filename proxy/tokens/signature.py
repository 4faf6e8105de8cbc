"""PyJWT's verification of a token already read by tokens/unverified.py, without reading it a
second time. Pure.

jwt.decode parses the token again, and its base64url check walks every character in Python:
for an access token that is more than the RS256 signature check itself. Here the same judge
runs on what unverified.read found: PyJWT's algorithm object checks the signature, PyJWT's
claim validation checks the registered claims. Only tokens whose bytes PyJWT's parser reads
exactly as unverified.read does take this path (canonical base64url, no `b64` or `crit`
header); any other goes to jwt.decode whole. tests/test_signature_differential.py holds
jwt.decode as the oracle: for every token both accept or both refuse, with the same claims.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import jwt

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
# The bits of the last character that encode no byte, by segment length modulo 4.
_UNUSED_BITS = {0: 0, 2: 0b1111, 3: 0b11}


def is_canonical(segment: str) -> bool:
    """Whether a segment of the base64url alphabet (unverified.read checked that) is
    the one encoding of its bytes: the unused bits of its last character are zero. PyJWT
    refuses the other spellings (they decode to the same bytes), and so does this path."""
    unused = _UNUSED_BITS.get(len(segment) % 4)
    if unused is None:
        return False
    return not segment or _VALUE[segment[-1]] & unused == 0


_JWS = jwt.PyJWS()
_JWT = jwt.PyJWT()


def decode(
    token: str,
    header: dict[str, Any],
    payload: dict[str, Any],
    key: Any,
    alg: str,
    *,
    audience: Sequence[str] | None = None,
    issuer: str | None = None,
    leeway: float = 0,
    options: dict[str, Any],
) -> dict[str, Any]:
    """jwt.decode(token, key, algorithms=[alg], ...) for a token whose header and payload
    unverified.read gave; raises what jwt.decode raises. `alg` is the header's, already
    allowed by the caller; `key` a public key, or a PyJWK bound to one algorithm."""
    if "b64" in header or "crit" in header:
        # RFC 7797 and critical extensions: PyJWT's own rules, in full.
        return _decode_whole(token, key, alg, audience, issuer, leeway, options)
    head, body, signature = token.split(".")
    if not (is_canonical(head) and is_canonical(body) and is_canonical(signature)):
        raise jwt.DecodeError("token segments are not canonical base64url")
    try:
        raw_signature = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        raise jwt.DecodeError("Invalid crypto padding") from None
    if isinstance(key, jwt.PyJWK):
        # As PyJWS: a PyJWK verifies with the algorithm it was made for, and no other.
        if alg != key.algorithm_name:
            raise jwt.InvalidAlgorithmError("Token algorithm does not match the key's")
        algorithm, prepared = key.Algorithm, key.Algorithm.prepare_key(key.key)
    else:
        try:
            algorithm = _JWS.get_algorithm_by_name(alg)
        except NotImplementedError:
            raise jwt.InvalidAlgorithmError("Algorithm not supported") from None
        prepared = algorithm.prepare_key(key)
    signing_input = f"{head}.{body}".encode("ascii")
    if not algorithm.verify(signing_input, prepared, raw_signature):
        raise jwt.InvalidSignatureError("Signature verification failed")
    merged: Any = {**_JWT.options, **options}
    _JWT._validate_claims(payload, merged, audience=audience, issuer=issuer, leeway=leeway)
    return payload


def _decode_whole(
    token: str,
    key: Any,
    alg: str,
    audience: Sequence[str] | None,
    issuer: str | None,
    leeway: float,
    options: dict[str, Any],
) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(
        token,
        key=key,
        algorithms=[alg],
        audience=audience,
        issuer=issuer,
        leeway=leeway,
        options=options,  # type: ignore[arg-type]
    )
    return payload

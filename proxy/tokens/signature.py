"""jwt.decode's judgement of a token already read by tokens/unverified.py, without reading it
a second time. Pure.

jwt.decode parses the token again, and its base64url check walks every character in Python:
for an access token that is more than the RS256 signature check itself. Here the same rules
run on what unverified.read found: PyJWT picks the algorithm object and prepares the key (once
per key and algorithm); the signature is checked by the `cryptography` call PyJWT's algorithm
object makes (RSA PKCS#1 v1.5 and ECDSA with their fixed arguments built once; any other
algorithm by PyJWT's own verify); the registered claims by PyJWT's rules
(tokens/registered_claims.py). Only tokens whose bytes PyJWT's parser reads exactly as
unverified.read does take this path (canonical base64url, no `b64` or `crit` header); any other
goes to jwt.decode whole. tests/test_signature_differential.py holds jwt.decode as the oracle:
for every token both accept with the same claims, or both refuse with the same exception type.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from proxy.tokens import registered_claims

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
_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")

Check = Callable[[bytes, bytes], bool]  # (signing input, signature) -> genuine?
# (id(key), alg) -> (key, its signature check). Access tokens are judged by a handful of
# keys: what PyJWT's prepare_key decides about a key object (an immutable value) for an
# algorithm is decided once, not per token. Only keys that passed are kept, the key itself
# with them (an id is reused only once its object is gone); the bound keeps forged-kid
# floods and DPoP clients from growing it without end.
_prepared: dict[tuple[int, str], tuple[object, Check]] = {}
PREPARED_KEYS_LIMIT = 1024
# The options of the last call, and the claim rules they make once merged over PyJWT's
# defaults as jwt.decode merges them: callers pass module constants, so this is worked out
# once per caller, not per token.
_rules = (cast(object, None), registered_claims.rules_of(_JWT.options))
_NO_OPTIONS: dict[str, Any] = {}  # PyJWT's defaults


def decode(
    token: str,
    header: dict[str, Any],
    payload: dict[str, Any],
    key: Any,
    alg: str,
    audience: Sequence[str] | None = None,
    issuer: str | None = None,
    leeway: float = 0,
    options: dict[str, Any] = _NO_OPTIONS,
    now: float | None = None,
) -> dict[str, Any]:
    """jwt.decode(token, key, algorithms=[alg], ...) for a token whose header and payload
    unverified.read gave; raises what jwt.decode raises. `alg` is the header's, already
    allowed by the caller; `key` a public key, or a PyJWK bound to one algorithm. `options`
    must not change once passed (callers pass constants). `now`: the clock the claims are
    judged by, when the caller read it already."""
    global _rules
    if "b64" in header or "crit" in header:
        # RFC 7797 and critical extensions: PyJWT's own rules, in full.
        return _decode_whole(token, key, alg, audience, issuer, leeway, options)
    head, body, signature = token.split(".")
    if not (is_canonical(head) and is_canonical(body) and is_canonical(signature)):
        raise jwt.DecodeError("token segments are not canonical base64url")
    # unverified.read let only the base64url alphabet through, and the length is canonical:
    # binascii reads it as base64.urlsafe_b64decode would, without its Python around it.
    try:
        raw_signature = binascii.a2b_base64(
            signature.encode("ascii").translate(_STANDARD_ALPHABET) + b"=" * (-len(signature) % 4)
        )
    except (binascii.Error, UnicodeEncodeError):  # not read by unverified.read first
        raise jwt.DecodeError("Invalid crypto padding") from None
    entry = _prepared.get((id(key), alg))
    if entry is None or entry[0] is not key:
        entry = _prepare(key, alg)
    if not entry[1](token[: len(head) + len(body) + 1].encode("ascii"), raw_signature):
        raise jwt.InvalidSignatureError("Signature verification failed")
    if _rules[0] is not options:
        _rules = (options, registered_claims.rules_of(_JWT._merge_options(cast(Any, options))))
    registered_claims.validate(
        payload, _rules[1], audience, issuer, leeway, time.time() if now is None else now
    )
    return payload


def _prepare(key: Any, alg: str) -> tuple[object, Check]:
    """PyJWS's choice of algorithm object and its prepare_key, remembered when they pass."""
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
    if len(_prepared) >= PREPARED_KEYS_LIMIT:
        _prepared.clear()
    entry = _prepared[(id(key), alg)] = (key, check_for(algorithm, prepared))
    return entry


def check_for(algorithm: Any, key: Any) -> Check:
    """The signature check of PyJWT's `algorithm` with the prepared `key`. For RSASSA-PKCS1
    v1.5 and ECDSA with a public key: the one `cryptography` call RSAAlgorithm.verify and
    ECAlgorithm.verify make, with the padding, hash and signature algorithm objects built
    here once instead of per token (and, for ECDSA, the raw r || s to DER conversion of
    jwt.utils.raw_to_der_signature). Any other: PyJWT's algorithm.verify itself."""
    kind = type(algorithm)  # RSAPSSAlgorithm is an RSAAlgorithm: compared exactly
    if kind is RSAAlgorithm and isinstance(key, rsa.RSAPublicKey):
        pkcs1, digest = padding.PKCS1v15(), algorithm.hash_alg()

        def check_rsa(message: bytes, signature: bytes) -> bool:
            try:
                key.verify(signature, message, pkcs1, digest)
            except InvalidSignature:
                return False
            return True

        return check_rsa
    if kind is ECAlgorithm and isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        ecdsa = ec.ECDSA(algorithm.hash_alg())

        def check_ecdsa(message: bytes, signature: bytes) -> bool:
            if len(signature) != 2 * size:  # as raw_to_der_signature: not r || s of the curve
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            try:
                key.verify(der, message, ecdsa)
            except InvalidSignature:
                return False
            return True

        return check_ecdsa

    def check_by_pyjwt(message: bytes, signature: bytes) -> bool:
        return bool(algorithm.verify(message, key, signature))

    return check_by_pyjwt


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

"""DPoP proofs (RFC 9449 §4.3): is this proof genuine, fresh and about this request? Pure.

JOSE is PyJWT's (header, key import, signature); this module only decides which checks apply
and says which one failed. The jti replay cache and the cnf.jkt comparison are here too; which
token needs a proof is the pipeline's call.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import jwt
from jwt.types import Options

from proxy.cache import ExpiringCache
from proxy.errors import AuthError, Reason
from proxy.tokens import signature, unverified
from proxy.trace import Trace

# Asymmetric JWS algorithms only: a proof shows possession of a private key (RFC 9449 §4.2).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Members of a JWK that belong to a private or symmetric key (RFC 7518 §6); "oct" has "k".
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7638 §3.2: the required members hashed for a thumbprint, per key type.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
MAX_PROOF_LENGTH = 8192
_URL_SAFE = bytes.maketrans(b"+/", b"-_")
_STANDARD = bytes.maketrans(b"-_", b"+/")
_NUMBERS = (int, float)
# PyJWT's checks for a proof: the signature only. Times are checked with the DPoP window; a
# proof has no exp or aud, and an extra claim a client adds (RFC 9449 §4.2 allows them) is not
# ours to judge.
PROOF_DECODE_OPTIONS: Options = {
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_aud": False,
    "verify_iss": False,
}
_PROOF_OPTIONS: dict[str, Any] = dict(PROOF_DECODE_OPTIONS)


# Public keys imported from proofs' jwk, by RFC 7638 thumbprint and alg: a client signs every
# proof with the same key, and importing it again costs more than the hash that names it. The
# thumbprint covers every member that defines the public key, so an entry is exactly the key
# the jwk describes. They never expire; the least recently used goes first.
_KEYS: ExpiringCache[jwt.PyJWK] = ExpiringCache(4096)


class ProofHeader(NamedTuple):
    """A proof header that passed every check of its own (typ, alg, jwk), and its key ready to
    verify with: (signing input, raw signature) -> whether the signature is good."""

    alg: str
    thumbprint: str
    verify: Callable[[bytes, bytes], bool]


def signature_check(key: jwt.PyJWK) -> Callable[[bytes, bytes], bool]:
    """PyJWT's algorithm.verify for `key`, with the key prepared once and the check's fixed
    arguments built once (signature.check_for). tests/test_proof_differential.py holds
    PyJWT's as the oracle."""
    algorithm = key.Algorithm
    return signature.check_for(algorithm, algorithm.prepare_key(key.key))


# Checked headers by their base64url segment as sent: a client sends the same header with every
# proof, and decoding it, hashing its jwk and finding its key again cost some 12 µs a proof.
# An entry is a verdict on exactly those bytes (the allow-list, which is per pipeline, is still
# checked on each use). Only canonical headers without b64 or crit (signature.decode's own
# path), and not longer than an RSA-4096 jwk needs, are kept: a bounded number of bounded
# strings, the oldest first out.
_HEADERS: dict[str, ProofHeader] = {}
_HEADERS_SIZE = 4096
_HEADER_SEGMENT_LIMIT = 1400
# What PyJWT's claim validation still checks of a proof with the options above (verify_sub,
# verify_jti): these claims, when present, are strings.
_STRING_CLAIMS = ("sub", "jti")


class Proof(NamedTuple):  # a tuple: one is made for every proof
    """A proof that passed every check of its own: who signed it (thumbprint) and its jti."""

    thumbprint: str  # RFC 7638 JWK thumbprint of the proof's key, base64url
    jti: str
    iat: float
    nonce: str | None = None  # RFC 9449 §9: checked only with dpop.nonce


def b64url_sha256(data: bytes) -> str:
    encoded = binascii.b2a_base64(hashlib.sha256(data).digest(), newline=False)
    return encoded.translate(_URL_SAFE)[:-1].decode("ascii")  # 32 bytes: one "=" of padding


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, no whitespace."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise _refuse(Reason.INVALID_DPOP_PROOF, "the proof's jwk is not a usable public key")
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return b64url_sha256(canonical.encode("utf-8"))


def _refuse(reason: Reason, description: str) -> AuthError:
    return AuthError(reason, description)


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str,
    algorithms: frozenset[str],
    max_age: float,
    leeway: float,
    now: float | None = None,
    trace: Trace | None = None,
    token_hash: str | None = None,
) -> Proof:
    """Every check of RFC 9449 §4.3 that needs only the proof and the request; raises
    AuthError with the reason of the first that fails. `trace`: where to record each check
    (proxy/trace.py), for explain; None on the request path. `token_hash`: access_token's
    b64url SHA-256, when the caller has it already."""
    expected_ath = token_hash or b64url_sha256(access_token.encode("ascii"))
    if trace is not None:
        trace.check("length", length=len(proof), limit=MAX_PROOF_LENGTH)
    if len(proof) > MAX_PROOF_LENGTH:
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof too long")
    if trace is None:
        known = _HEADERS.get(proof.partition(".")[0])
        if known is not None:  # every check of the header passed on these very bytes
            if known.alg not in algorithms:
                raise _refuse(Reason.DPOP_DISALLOWED_ALGORITHM, "DPoP proof alg is not allowed")
            try:
                head, payload = unverified.read_payload(proof)
            except unverified.Unreadable:
                raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof is not a JWS") from None
            claims = _verified_claims(proof, len(head), payload, known)
            return _check_claims(
                claims, known.thumbprint, method, url, expected_ath, max_age, leeway, now, None
            )
    if trace is not None:
        trace.check("JWS form")
    try:
        header, payload = unverified.read(proof)
    except unverified.Unreadable:
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof is not a JWS") from None
    alg, thumbprint, key = _check_header(header, algorithms, trace)
    head = proof.partition(".")[0]
    if (
        len(head) <= _HEADER_SEGMENT_LIMIT
        and signature.is_canonical(head)
        and "b64" not in header
        and "crit" not in header
    ):
        _remember_header(head, alg, thumbprint, key)
    if trace is not None:
        trace.check("signature")
    try:
        # PyJWT's judges on the proof as read above (tokens/signature.py).
        claims = signature.decode(proof, header, payload, key, alg, options=_PROOF_OPTIONS)
    except jwt.InvalidSignatureError:
        raise _refuse(Reason.DPOP_INVALID_SIGNATURE, "DPoP proof signature is invalid") from None
    except jwt.PyJWTError as exc:
        if trace is not None:
            trace.note(error=str(exc))
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof cannot be decoded") from None
    return _check_claims(claims, thumbprint, method, url, expected_ath, max_age, leeway, now, trace)


def _remember_header(head: str, alg: str, thumbprint: str, key: jwt.PyJWK) -> None:
    try:
        check = signature_check(key)
    except jwt.PyJWTError:  # a key PyJWT will not verify with (an EC key of another curve)
        return  # every proof with it is refused by signature.decode, as read whole
    if len(_HEADERS) >= _HEADERS_SIZE:
        del _HEADERS[next(iter(_HEADERS))]
    _HEADERS[head] = ProofHeader(alg, thumbprint, check)


def _check_header(
    header: dict[str, Any], algorithms: frozenset[str], trace: Trace | None
) -> tuple[str, str, jwt.PyJWK]:
    """RFC 9449 §4.3 steps 4-6 on the header: typ, an allowed asymmetric alg, a public jwk
    that fits it. (alg, the jwk's thumbprint, its key)."""
    if trace is not None:
        trace.check("typ", typ=header.get("typ"))
    if header.get("typ") != "dpop+jwt":
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof typ is not dpop+jwt")
    alg = header.get("alg")
    if trace is not None:
        trace.check("alg", alg=alg, algorithms=sorted(algorithms))
    if not isinstance(alg, str) or alg not in algorithms or alg not in ASYMMETRIC_ALGORITHMS:
        raise _refuse(Reason.DPOP_DISALLOWED_ALGORITHM, "DPoP proof alg is not allowed")
    jwk = header.get("jwk")
    if trace is not None:  # the members' names only: a private one's value is never kept
        trace.check("jwk", members=sorted(jwk) if isinstance(jwk, dict) else None)
    if not isinstance(jwk, dict):
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof has no jwk header")
    if PRIVATE_MEMBERS & jwk.keys():
        raise _refuse(Reason.DPOP_PRIVATE_KEY, "DPoP proof jwk holds private key material")
    if trace is not None:
        trace.check("thumbprint", kty=jwk.get("kty"), crv=jwk.get("crv"))
    thumbprint = jwk_thumbprint(jwk)
    if trace is not None:
        trace.note(thumbprint=thumbprint)
        trace.check("key", alg=alg, kty=jwk.get("kty"), crv=jwk.get("crv"))
    name = f"{thumbprint} {alg}".encode()
    key = _KEYS.get(name, 0.0)
    if key is None:
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            raise _refuse(
                Reason.INVALID_DPOP_PROOF, "the proof's jwk does not fit its alg"
            ) from None
        _KEYS.put(name, key, math.inf)
    return alg, thumbprint, key


def _verified_claims(
    proof: str, head_length: int, payload: dict[str, Any], known: ProofHeader
) -> dict[str, Any]:
    """signature.decode's steps for a proof whose header is known: the segments' canonical
    spelling, the signature, the claim rules PyJWT applies with PROOF_DECODE_OPTIONS.
    tests/test_proof_differential.py holds jwt.decode as the oracle."""
    signing_input, _, sig = proof.rpartition(".")
    if not (
        signature.is_canonical(signing_input[head_length + 1 :]) and signature.is_canonical(sig)
    ):
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof cannot be decoded")
    # Canonical base64url (read_payload checked the alphabet): binascii decodes it as is.
    raw = binascii.a2b_base64(sig.encode("ascii").translate(_STANDARD) + b"=" * (-len(sig) % 4))
    if not known.verify(signing_input.encode("ascii"), raw):
        raise _refuse(Reason.DPOP_INVALID_SIGNATURE, "DPoP proof signature is invalid")
    for name in _STRING_CLAIMS:
        if name in payload and not isinstance(payload[name], str):
            raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof cannot be decoded")
    return payload


def _check_claims(
    claims: dict[str, Any],
    thumbprint: str,
    method: str,
    url: str,
    expected_ath: str,
    max_age: float,
    leeway: float,
    now: float | None,
    trace: Trace | None,
) -> Proof:
    jti, iat = claims.get("jti"), claims.get("iat")
    if trace is not None:
        trace.check("jti", jti=jti)
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof has no usable jti")
    if trace is not None:
        trace.check("iat", iat=iat)
    if not isinstance(iat, _NUMBERS) or isinstance(iat, bool):
        raise _refuse(Reason.INVALID_DPOP_PROOF, "DPoP proof has no numeric iat")
    if trace is not None:
        trace.check("htm", htm=claims.get("htm"), method=method)
    if claims.get("htm") != method:
        raise _refuse(Reason.DPOP_WRONG_METHOD, "DPoP proof htm is not the request method")
    htu = claims.get("htu")
    if trace is not None:
        trace.check("htu", htu=htu, url=url)
    expected_url = _normalized(url)
    if not isinstance(htu, str) or expected_url is None or _normalized(htu) != expected_url:
        raise _refuse(Reason.DPOP_WRONG_URL, "DPoP proof htu is not the request URL")
    current = time.time() if now is None else now
    if trace is not None:
        trace.check("iat age", iat=iat, now=current, max_age=max_age, leeway=leeway)
    if iat < current - max_age - leeway:
        raise _refuse(Reason.DPOP_PROOF_EXPIRED, "DPoP proof iat is too old")
    if iat > current + leeway:
        raise _refuse(Reason.DPOP_PROOF_NOT_YET_VALID, "DPoP proof iat is in the future")
    ath = claims.get("ath")
    # RFC 9449 §4.3 step 12: ath is the hash of the very token sent with the proof.
    if trace is not None:  # both are hashes: neither lets a reader use the token
        trace.check("ath", ath=ath, expected=expected_ath)
    if not isinstance(ath, str) or not hmac.compare_digest(ath.encode(), expected_ath.encode()):
        raise _refuse(Reason.DPOP_WRONG_ATH, "DPoP proof ath is not the access token's hash")
    nonce = claims.get("nonce")
    return Proof(
        thumbprint, jti, float(iat), nonce if isinstance(nonce, str) and len(nonce) <= 256 else None
    )


def normalize_url(url: str) -> str | None:
    """RFC 9449 §4.3 step 9 with RFC 3986 §6.2.2-6.2.3 normalisation: scheme and host in
    lower case, no default port. A query or fragment in htu is refused (None), not dropped."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme != "https" or not host:
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    authority = host if port in (None, 443) else f"{host}:{port}"
    return f"{scheme}://{authority}{parts.path or '/'}"


# A client sends the same htu to the same URL: its normal form, remembered (a pure function
# of the string; bounded, as the strings are by the proof's length).
_normalized = functools.lru_cache(maxsize=1024)(normalize_url)


def check_key(jkt: str, proof: Proof) -> None:
    """The token's cnf.jkt names the proof's key (RFC 9449 §6.1), in constant time."""
    if not hmac.compare_digest(jkt.encode("ascii"), proof.thumbprint.encode("ascii")):
        raise _refuse(Reason.DPOP_KEY_MISMATCH, "token is bound to a different DPoP key")


class Nonces:
    """RFC 9449 §9 server nonces with no state to share: a nonce is the HMAC of a period number
    under a key, so every replica holding the key issues and accepts the same ones. A nonce is
    good in its period and the next, so one issued just before a rotation still works."""

    def __init__(self, key: bytes, rotation_seconds: int) -> None:
        self._key = key
        self._rotation = rotation_seconds

    def _for(self, period: int) -> str:
        mac = hmac.new(self._key, b"certbound-dpop-nonce:%d" % period, hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:18]).decode("ascii")

    def current(self, now: float | None = None) -> str:
        return self._for(int((time.time() if now is None else now) // self._rotation))

    def check(self, nonce: str | None, now: float | None = None) -> str | None:
        """None when `nonce` is this period's; the current nonce when `nonce` is the previous
        period's (still good; send the client the new one). Raises AuthError, carrying the
        current nonce, for a missing or unknown one."""
        period = int((time.time() if now is None else now) // self._rotation)
        current = self._for(period)
        if nonce is None:
            refusal = _refuse(Reason.DPOP_NONCE_MISSING, "resource server requires a DPoP nonce")
        else:
            given = nonce.encode()
            if hmac.compare_digest(given, current.encode()):
                return None
            if hmac.compare_digest(given, self._for(period - 1).encode()):
                return current
            refusal = _refuse(Reason.DPOP_NONCE_INVALID, "DPoP nonce is unknown or expired")
        refusal.dpop_nonce = current
        raise refusal

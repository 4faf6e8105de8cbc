"""Is the JWT genuine and meant for us? Signature, algorithm, iss, aud, exp/nbf/iat, typ.

Verification is PyJWT's (tokens/signature.py runs it on the token as read once); this module
decides which key and which rules (those of the issuer the token's `iss` picks,
tokens/issuers.py), and maps PyJWT's exceptions onto our reasons.
Verified claims are cached by the token's SHA-256 until the token expires; the cache is
bounded and flushed when a key set changes.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import jwt

from proxy.cache import ExpiringCache
from proxy.errors import AuthError, Reason
from proxy.settings import IssuerSettings
from proxy.tokens import signature, unverified
from proxy.tokens.claim_headers import ClaimHeaderSpec, render_claim_headers
from proxy.tokens.claims import TokenClaims, check_lifetime, claims_from_payload, token_id
from proxy.tokens.issuers import Issuers, issuer_in

__all__ = [
    "JWTVerifier",
    "TokenCache",
    "TokenClaims",
    "check_header",
    "read_header",
    "verify_with_key",
]

# Which JWK key types may verify which algorithm family. Stops, for example, an RSA public
# key being used as an HMAC secret (the classic RS256 -> HS256 confusion attack).
_KTY_FOR_ALG_PREFIX = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP", "HS": "oct"}


def read_header(token: str) -> dict[str, Any]:
    return _read(token, payload=False)[0]


def _read(token: str, *, payload: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        return unverified.read(token, payload=payload)
    except unverified.Unreadable:
        raise AuthError(Reason.INVALID_TOKEN, "token is not a well-formed JWT") from None


def check_header(header: dict[str, Any], settings: IssuerSettings) -> str:
    """Algorithm and type rules that need no key. Returns the algorithm."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in settings.algorithms:
        raise AuthError(Reason.DISALLOWED_ALGORITHM, "token algorithm is not allowed")
    if "crit" in header:
        # RFC 7515 §4.1.11: we understand no extensions, so a critical one means reject.
        raise AuthError(Reason.INVALID_TOKEN, "token has critical header extensions")
    if settings.require_typ_at_jwt:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ("at+jwt", "application/at+jwt"):
            raise AuthError(Reason.WRONG_TYPE, "token typ must be at+jwt (RFC 9068)")
    return alg


# PyJWT's claim checks for an access token (RFC 9068 §4 requires exp, iss and aud).
_DECODE_OPTIONS: dict[str, Any] = {"require": ["exp", "iss", "aud"], "verify_iat": True}


def verify_with_key(
    token: str,
    alg: str,
    key: jwt.PyJWK,
    settings: IssuerSettings,
    now: float,
    claim_headers: ClaimHeaderSpec = (),
    *,
    read: tuple[dict[str, Any], dict[str, Any]] | None = None,
    digest: bytes | None = None,
) -> TokenClaims:
    """Signature, registered claims and lifetime, by the rules of the issuer that `iss`
    picked; the claims come back with that issuer's name and the claim-header lines.
    `read`: the token's (header, payload) from unverified.read, when the caller has them;
    `digest`: its token_digest, likewise."""
    if _KTY_FOR_ALG_PREFIX.get(alg[:2]) != key.key_type:
        raise AuthError(Reason.UNKNOWN_KEY, "no key of the right type for the token algorithm")
    header, unverified_payload = read if read is not None else _read(token, payload=True)
    try:
        payload = signature.decode(
            token,
            header,
            unverified_payload,
            key.key,
            alg,
            settings.audience,
            settings.issuer,
            settings.leeway_seconds,
            _DECODE_OPTIONS,
            now,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(Reason.EXPIRED, "token has expired") from None
    except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
        raise AuthError(Reason.NOT_YET_VALID, "token is not yet valid") from None
    except jwt.InvalidAudienceError:
        raise AuthError(
            Reason.WRONG_AUDIENCE, "token audience does not include this service"
        ) from None
    except jwt.InvalidIssuerError:
        raise AuthError(Reason.WRONG_ISSUER, "token issuer is not trusted") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(Reason.MISSING_CLAIM, f"token has no {exc.claim} claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError(Reason.INVALID_SIGNATURE, "token signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(Reason.DISALLOWED_ALGORITHM, "token algorithm is not allowed") from None
    except jwt.InvalidTokenError:
        raise AuthError(Reason.INVALID_TOKEN, "token is malformed") from None
    try:
        expires_at, not_before = float(payload["exp"]), float(payload.get("nbf", 0))
    except (TypeError, ValueError, OverflowError):
        raise AuthError(Reason.INVALID_TOKEN, "token claims have the wrong types") from None
    # exp/nbf must be finite; PyJWT takes any integer, float() can give inf for huge ones.
    if not (math.isfinite(expires_at) and math.isfinite(not_before)):
        raise AuthError(Reason.INVALID_TOKEN, "token claims have the wrong types")
    if settings.max_lifetime_seconds > 0:
        check_lifetime(
            expires_at,
            payload.get("iat"),
            now,
            settings.max_lifetime_seconds,
            settings.leeway_seconds,
        )
    if digest is None:
        digest = token_digest(token)
    return claims_from_payload(
        payload,
        issuer_name=settings.name,
        token_id=token_id(payload.get("jti"), digest),
        claim_headers=render_claim_headers(claim_headers, payload) if claim_headers else b"",
    )


def token_digest(token: str) -> bytes:
    """What the token cache and the logs know a token by: its SHA-256."""
    return hashlib.sha256(token.encode("ascii")).digest()


class TokenCache(ExpiringCache[TokenClaims]):
    """Verified claims by SHA-256 of the token; an entry dies with its token."""


class JWTVerifier:
    """Cache first; on a miss, the token's `iss` picks the issuer whose keys and rules judge
    it. One cache for all issuers (a key set change at any of them flushes it)."""

    def __init__(
        self, issuers: Issuers, cache: TokenCache, claim_headers: ClaimHeaderSpec = ()
    ) -> None:
        self._issuers = issuers
        self._cache = cache
        self._claim_headers = claim_headers
        self._leeway = {ks.issuer.name: ks.issuer.leeway_seconds for ks in issuers.key_sets}
        # The token cached() last looked up, and its digest: a miss goes on to verify_now()
        # with the very same string, which then hashes it once, not three times.
        self._looked_up: tuple[str, bytes] = ("", b"")

    def leeway_for(self, claims: TokenClaims) -> float:
        """The clock leeway of the issuer that verified `claims`."""
        return self._leeway.get(claims.issuer_name, 0)

    @property
    def generation(self) -> int:
        """Changes whenever the key set changes (the cache is flushed then)."""
        return self._cache.generation

    def cached(self, token: str) -> TokenClaims | None:
        """Claims of a token verified before and not yet expired; no I/O, no signature."""
        now = time.time()
        digest = token_digest(token)
        self._looked_up = (token, digest)
        cached = self._cache.get(digest, now)
        # nbf may still lie ahead for a token cached early; recheck it cheaply.
        if (
            cached is not None
            and now < cached.not_before
            and now + self._leeway.get(cached.issuer_name, 0) < cached.not_before
        ):
            error = AuthError(Reason.NOT_YET_VALID, "token is not yet valid")
            error.issuer = cached.issuer_name
            raise error
        return cached

    async def verify(self, token: str) -> TokenClaims:
        cached = self.cached(token)
        if cached is not None:
            return cached
        return self.verify_now(token) or await self._verify_after_fetch(token)

    def verify_now(self, token: str) -> TokenClaims | None:
        """A token not in the cache, verified without I/O: None when its key must be fetched
        first (verify() does that). No task and no await on the common miss."""
        now = time.time()
        # One unverified read picks the issuer and the key; PyJWT's rules judge it all below.
        read = header, payload = _read(token, payload=True)
        keys = self._issuers.select(issuer_in(payload))
        issuer = keys.issuer
        try:
            alg = check_header(header, issuer)
            if not keys.is_loaded:
                raise AuthError(Reason.KEYS_UNAVAILABLE, "signing keys are not loaded yet")
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise AuthError(Reason.UNKNOWN_KEY, "token kid is not a string")
            key = keys.get(kid)
            if key is None:
                return None
            looked_up, digest = self._looked_up
            if looked_up is not token:
                digest = token_digest(token)
            claims = verify_with_key(
                token, alg, key, issuer, now, self._claim_headers, read=read, digest=digest
            )
        except AuthError as error:
            error.issuer = issuer.name
            raise
        self._cache.put(digest, claims, claims.expires_at + issuer.leeway_seconds)
        return claims

    async def _verify_after_fetch(self, token: str) -> TokenClaims:
        """The token's kid is not among the keys: wait for the refetch that judges it."""
        header, payload = read = _read(token, payload=True)
        keys = self._issuers.select(issuer_in(payload))
        issuer = keys.issuer
        try:
            alg = check_header(header, issuer)
            key = await keys.key_for(header.get("kid"))
            if key is None:
                raise AuthError(Reason.UNKNOWN_KEY, "token is signed with an unknown key")
            now = time.time()
            digest = token_digest(token)
            claims = verify_with_key(
                token, alg, key, issuer, now, self._claim_headers, read=read, digest=digest
            )
        except AuthError as error:
            error.issuer = issuer.name
            raise
        self._cache.put(digest, claims, claims.expires_at + issuer.leeway_seconds)
        return claims

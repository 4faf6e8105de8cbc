"""Opaque tokens: RFC 7662 introspection, with the proxy's own client authentication
(client_secret_basic, or mTLS per RFC 8705 §2).

Results are cached by the token's SHA-256: active ones until min(exp, cache_ttl_seconds),
inactive ones for negative_cache_ttl_seconds. An endpoint that cannot answer means 503 for
tokens not in the cache, never an accept.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from proxy import metrics
from proxy.cache import ExpiringCache
from proxy.errors import AuthError, Reason
from proxy.settings import IssuerSettings
from proxy.tokens.claim_headers import ClaimHeaderSpec, render_claim_headers
from proxy.tokens.claims import TokenClaims, check_lifetime, token_id
from proxy.tokens.metadata import discover

log = logging.getLogger("certbound.introspect")

MAX_RESPONSE_BYTES = 64 * 1024


class _Inactive:
    """Cached marker: the server said `active: false`."""


_INACTIVE = _Inactive()


class Introspector:
    """The introspection client of the one issuer that has it enabled (an opaque token names
    no issuer, so check-config allows at most one)."""

    def __init__(self, issuer: IssuerSettings, claim_headers: ClaimHeaderSpec = ()) -> None:
        self._tokens = issuer
        self._settings = issuer.introspection
        self._claim_headers = claim_headers
        self._cache: ExpiringCache[TokenClaims | _Inactive] = ExpiringCache(
            self._settings.cache_size
        )
        self._session: aiohttp.ClientSession | None = None
        self._endpoint = self._settings.endpoint
        self._auth_header: str | None = None
        # Created at 0: the alert on errors takes increase(), blind to a series' first step.
        self._answers = {
            result: metrics.INTROSPECTION_REQUESTS.labels(issuer=issuer.name, result=result)
            for result in metrics.INTROSPECTION_RESULTS
        }

    async def start(self) -> None:
        s = self._settings
        context: ssl.SSLContext | None = None
        if s.ca_file or s.client_cert_file:
            context = ssl.create_default_context(cafile=s.ca_file or None)
            if s.client_cert_file:
                context.load_cert_chain(s.client_cert_file, s.client_key_file)
        secret = s.client_secret
        if s.client_secret_file:
            text = await asyncio.to_thread(Path(s.client_secret_file).read_text, "utf-8")
            secret = text.strip()
        if secret and not s.client_cert_file:
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
            pair = f"{quote(s.client_id, safe='')}:{quote(secret, safe='')}"
            self._auth_header = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context if context is not None else True),
            timeout=aiohttp.ClientTimeout(total=s.timeout_seconds),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def introspect(self, token: str) -> TokenClaims:
        try:
            return await self._introspect(token)
        except AuthError as error:
            error.issuer = self._tokens.name
            raise

    async def _introspect(self, token: str) -> TokenClaims:
        now = time.time()
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cache.get(digest, now)
        if isinstance(cached, _Inactive):
            raise AuthError(Reason.INACTIVE_TOKEN, "token is not active")
        if cached is not None:
            return cached
        try:
            answer = await self._ask(token)
        except AuthError:
            self._answers["error"].inc()
            raise
        is_active = answer.get("active") is True
        self._answers["active" if is_active else "inactive"].inc()
        if not is_active:
            self._cache.put(digest, _INACTIVE, now + self._settings.negative_cache_ttl_seconds)
            raise AuthError(Reason.INACTIVE_TOKEN, "token is not active")
        claims = self._claims(answer, now, digest)
        ttl_end = now + self._settings.cache_ttl_seconds
        self._cache.put(digest, claims, min(claims.expires_at, ttl_end))
        return claims

    def _claims(self, answer: dict[str, Any], now: float, digest: bytes) -> TokenClaims:
        leeway = self._tokens.leeway_seconds
        exp, nbf = answer.get("exp"), answer.get("nbf")
        for name, value in (("exp", exp), ("nbf", nbf)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise AuthError(Reason.INVALID_TOKEN, f"introspection {name} is not a number")
        if exp is not None and now > float(exp) + leeway:
            raise AuthError(Reason.EXPIRED, "token has expired")
        if nbf is not None and now + leeway < float(nbf):
            raise AuthError(Reason.NOT_YET_VALID, "token is not yet valid")
        iss = answer.get("iss")
        if iss is not None and iss != self._tokens.issuer:
            raise AuthError(Reason.WRONG_ISSUER, "token issuer is not trusted")
        aud = answer.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not any(a in audiences for a in self._tokens.audience):
            # Without an audience the token could be meant for any service: refuse.
            raise AuthError(Reason.WRONG_AUDIENCE, "token audience does not name this service")
        max_lifetime = self._tokens.max_lifetime_seconds
        if max_lifetime > 0:
            if exp is None:
                raise AuthError(
                    Reason.LIFETIME_TOO_LONG, "token has no exp, and its lifetime must be bounded"
                )
            check_lifetime(float(exp), answer.get("iat"), now, max_lifetime, leeway)
        scope = answer.get("scope", "")
        return TokenClaims(
            issuer=str(iss or self._tokens.issuer),
            subject=str(answer.get("sub", "")),
            client_id=str(answer.get("client_id", "")),
            scope=scope if isinstance(scope, str) else "",
            jti=str(answer.get("jti", "")),
            expires_at=float(exp) if exp is not None else now + self._settings.cache_ttl_seconds,
            not_before=float(nbf) if nbf is not None else 0.0,
            cnf=answer.get("cnf"),
            issuer_name=self._tokens.name,
            token_id=token_id(answer.get("jti"), digest),
            claim_headers=render_claim_headers(self._claim_headers, answer),
        )

    async def _ask(self, token: str) -> dict[str, Any]:
        assert self._session is not None
        endpoint = self._endpoint or await self._discover()
        form = {"token": token, "token_type_hint": "access_token"}
        headers = {"Accept": "application/json"}
        if self._auth_header:
            headers["Authorization"] = self._auth_header
        else:
            form["client_id"] = self._settings.client_id  # RFC 8705 §2: mTLS client auth
        try:
            async with self._session.post(
                endpoint, data=form, headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                if resp.status != 200 or len(body) > MAX_RESPONSE_BYTES:
                    log.warning("introspection endpoint answered HTTP %d", resp.status)
                    raise _unavailable()
                answer = json.loads(body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("introspection endpoint unreachable: %s", type(exc).__name__)
            raise _unavailable() from None
        except ValueError:
            log.warning("introspection endpoint answered with something that is not JSON")
            raise _unavailable() from None
        if not isinstance(answer, dict):
            raise _unavailable()
        return answer

    async def _discover(self) -> str:
        assert self._session is not None
        endpoint = await discover(
            self._session,
            self._tokens.issuer,
            "introspection_endpoint",
            time_limit=self._settings.timeout_seconds,
        )
        if endpoint is None:
            log.warning("no introspection_endpoint in the metadata of %s", self._tokens.issuer)
            raise _unavailable()
        self._endpoint = endpoint
        return endpoint


def _unavailable() -> AuthError:
    return AuthError(Reason.INTROSPECTION_UNAVAILABLE, "token introspection is unavailable")

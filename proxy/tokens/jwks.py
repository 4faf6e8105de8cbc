"""The issuer's key set: fetched (or read from a file), cached, refreshed on a timer and on an
unknown `kid` at most once per interval, so random kids cannot make us hammer the issuer.

Header parameters that point at keys (`jku`, `x5u`, `jwk`, `x5c`) are never used: keys come
only from the configured source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
from prometheus_client import Counter, Gauge

from proxy import metrics
from proxy.fetch import FetchError
from proxy.settings import IssuerSettings, TokenSettings
from proxy.tokens.metadata import discover, get_json

log = logging.getLogger("certbound.jwks")


class KeySetError(Exception):
    """The key set could not be loaded; the text is safe to log."""


def parse_jwks(document: object, algorithms: tuple[str, ...]) -> dict[str | None, jwt.PyJWK]:
    """Keys by kid. Keys we cannot use (unknown kty, private parts, bad `use`) are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError('JWKS is not a JSON object with a "keys" array')
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        # A private key in a public JWKS is an issuer mistake; never hold it in memory here.
        if any(member in entry for member in ("d", "p", "q", "dp", "dq", "qi")):
            log.warning("skipping JWKS entry with private key material (kid=%s)", entry.get("kid"))
            continue
        if entry.get("kty") == "oct" and not any(a.startswith("HS") for a in algorithms):
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            keys[kid] = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("skipping unusable JWKS entry kid=%s: %s", kid, type(exc).__name__)
    if not keys:
        raise KeySetError("JWKS has no usable signing keys")
    return keys


@dataclass(frozen=True, slots=True)
class _KeySetSeries:
    refreshed: Counter
    failed: Counter
    key_count: Gauge
    last_success: Gauge

    @classmethod
    def of(cls, issuer: str) -> _KeySetSeries:
        return cls(
            metrics.JWKS_REFRESH.labels(result="success", issuer=issuer),
            metrics.JWKS_REFRESH.labels(result="failure", issuer=issuer),
            metrics.JWKS_KEYS.labels(issuer=issuer),
            metrics.JWKS_LAST_SUCCESS.labels(issuer=issuer),
        )


class KeySet:
    """One issuer's current keys; `on_change` runs when a refresh brings a different set."""

    def __init__(
        self,
        issuer: IssuerSettings,
        settings: TokenSettings,
        session: aiohttp.ClientSession,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.issuer = issuer
        self._settings = settings
        self._session = session
        self._on_change = on_change
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fingerprint: str = ""
        self._jwks_uri: str = issuer.jwks_uri
        # With tokens.accept_jwt false no key set is ever loaded: series at 0 would read as
        # "no keys" and page someone about a healthy pod, so they only exist where JWTs are.
        self._series: _KeySetSeries | None = (
            _KeySetSeries.of(issuer.name) if settings.accept_jwt else None
        )
        self._last_kid_refetch = float("-inf")
        self._lock = asyncio.Lock()
        self._loaded = asyncio.Event()

    @property
    def is_loaded(self) -> bool:
        return bool(self._keys)

    async def wait_loaded(self) -> None:
        await self._loaded.wait()

    def get(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for `kid`, refetching once per jwks_min_refetch_seconds if it is unknown."""
        key = self.get(kid)
        if key is not None:
            return key
        interval = self._settings.jwks_min_refetch_seconds
        if time.monotonic() - self._last_kid_refetch < interval:
            return None
        async with self._lock:
            # Another request may have refetched while we waited for the lock.
            if time.monotonic() - self._last_kid_refetch >= interval:
                self._last_kid_refetch = time.monotonic()
                try:
                    await self.refresh()
                except KeySetError as exc:
                    log.warning(
                        "key set refresh of issuer %s for unknown kid failed: %s",
                        self.issuer.name,
                        exc,
                    )
        return self.get(kid)

    async def refresh(self) -> None:
        if self._series is None:
            self._series = _KeySetSeries.of(self.issuer.name)
        series = self._series
        try:
            document = await self._load()
            keys = parse_jwks(document, self.issuer.algorithms)
        except KeySetError:
            series.failed.inc()
            raise
        series.refreshed.inc()
        series.last_success.set(time.time())
        series.key_count.set(len(keys))
        fingerprint = json.dumps(document, sort_keys=True)
        if fingerprint != self._fingerprint:
            changed = bool(self._fingerprint)
            self._keys, self._fingerprint = keys, fingerprint
            self._loaded.set()
            log.info(
                "key set of issuer %s loaded: %d keys, kids=%s",
                self.issuer.name,
                len(keys),
                sorted(map(str, keys)),
            )
            if changed:
                self._on_change()

    async def run(self, stop: asyncio.Event) -> None:
        """Load now and keep the set fresh; retry failures with capped, jittered backoff."""
        delay = 1.0
        while not stop.is_set():
            try:
                await self.refresh()
            except KeySetError as exc:
                log.error(
                    "key set refresh of issuer %s failed: %s (retrying in %.0fs)",
                    self.issuer.name,
                    exc,
                    delay,
                )
                wait = delay
                delay = min(delay * 2, self._settings.jwks_refresh_seconds, 60.0)
            else:
                delay = 1.0
                wait = self._settings.jwks_refresh_seconds
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait * random.uniform(0.9, 1.1))  # noqa: S311
            except TimeoutError:
                pass

    async def _load(self) -> object:
        if self.issuer.jwks_file:
            try:
                text = await asyncio.to_thread(Path(self.issuer.jwks_file).read_text, "utf-8")
                return json.loads(text)
            except (OSError, ValueError) as exc:
                raise KeySetError(f"cannot read jwks_file: {exc}") from None
        if not self._jwks_uri:
            uri = await discover(self._session, self.issuer.issuer, "jwks_uri", time_limit=10)
            if uri is None:
                raise KeySetError(f"no jwks_uri in the metadata of issuer {self.issuer.issuer}")
            self._jwks_uri = uri
        try:
            return await get_json(self._session, self._jwks_uri, time_limit=10)
        except FetchError as exc:
            raise KeySetError(str(exc)) from None

"""The issuer's key set: fetched (or read from a file), cached, refreshed on a timer and on an
unknown `kid`. Requests with unknown kids share one refetch and wait for it, so a rotation
costs no request; refetches draw on a small budget (tokens/refetch.py), so random kids cannot
make us hammer the issuer.

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
from proxy.tokens.refetch import RefetchBudget

# Every fetch of the metadata or the key set gives up after this long.
FETCH_TIME_LIMIT = 10.0

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
        self._budget = RefetchBudget(settings.jwks_min_refetch_seconds, time.monotonic())
        self._refetch: asyncio.Task[None] | None = None
        # Monotonic start of the latest fetch that has answered (keys or failure), and of the
        # one whose keys are held: a request is answered only by a fetch it did not precede.
        self._answered_since = float("-inf")
        self._applied_since = float("-inf")
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
        """The key for `kid`; an unknown one waits for a fetch that began after it arrived.

        Waiting, not refusing, is what makes a rotation free: the tokens with the new kid that
        arrive while its refetch is on the wire are judged by its answer. None when that answer
        has no such key, or when the issuer does not answer within the wait limit."""
        key = self.get(kid)
        if key is not None:
            return key
        arrived = time.monotonic()
        # An in-flight fetch, then the budget's pause, then our own fetch.
        limit = 2 * FETCH_TIME_LIMIT + self._budget.interval
        try:
            async with asyncio.timeout(limit):
                while self._answered_since < arrived:
                    if self._refetch is None or self._refetch.done():
                        self._refetch = asyncio.create_task(self._refetch_when_allowed())
                    # Shielded: a waiter that goes away must not cancel the others' fetch.
                    await asyncio.shield(self._refetch)
                    key = self.get(kid)
                    if key is not None:
                        return key
        except TimeoutError:
            log.warning(
                "key set of issuer %s did not answer for an unknown kid within %.0fs",
                self.issuer.name,
                limit,
            )
        return self.get(kid)

    async def _refetch_when_allowed(self) -> None:
        """One refetch for every request now waiting, once the budget allows it."""
        await asyncio.sleep(self._budget.wait(time.monotonic()))
        self._budget.take(time.monotonic())
        try:
            await self.refresh()
        except KeySetError as exc:
            log.warning(
                "key set refresh of issuer %s for unknown kid failed: %s", self.issuer.name, exc
            )

    async def refresh(self) -> None:
        if self._series is None:
            self._series = _KeySetSeries.of(self.issuer.name)
        series = self._series
        started = time.monotonic()
        try:
            document = await self._load()
            keys = parse_jwks(document, self.issuer.algorithms)
        except KeySetError:
            series.failed.inc()
            self._answered_since = max(self._answered_since, started)
            raise
        self._answered_since = max(self._answered_since, started)
        series.refreshed.inc()
        if started < self._applied_since:
            return  # a fetch that began later has answered already: its keys are newer
        self._applied_since = started
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
            uri = await discover(
                self._session, self.issuer.issuer, "jwks_uri", time_limit=FETCH_TIME_LIMIT
            )
            if uri is None:
                raise KeySetError(f"no jwks_uri in the metadata of issuer {self.issuer.issuer}")
            self._jwks_uri = uri
        try:
            return await get_json(self._session, self._jwks_uri, time_limit=FETCH_TIME_LIMIT)
        except FetchError as exc:
            raise KeySetError(str(exc)) from None

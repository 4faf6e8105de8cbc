"""tls.fetch_crls: download the client CAs' CRLs from the CRL Distribution Points their
certificates name, verify each against the CA bundle, and refresh them before nextUpdate.

Runs beside the data plane on the shared aiohttp session; parsing and signature checks run in
a thread. The data plane never waits for it: it reads the CRLSet `ServerTLS` rebuilds when a
fetch brings a new CRL. A failed fetch keeps the last good CRL (it goes stale at its own
nextUpdate, and then counts as unknown like a stale file). Only http:// points are used:
RFC 5280 §4.2.1.13 CRLs are signed, and https would make revocation depend on another PKI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
from cryptography import x509

from proxy import metrics
from proxy.fetch import FetchError, get_bounded
from proxy.trust.revocation import IssuerCRL, index_crl, parse_crl

log = logging.getLogger("certbound.tls")

MAX_CRL_BYTES = 10 * 1024 * 1024  # larger answers are refused, not read on
FETCH_TIMEOUT = 10.0  # seconds for one download, connect to last byte
RETRY_SECONDS = 60.0  # after a failed fetch (never later than the refresh interval)
MIN_REFRESH_SECONDS = 30.0


def distribution_points(cas: Sequence[x509.Certificate]) -> tuple[list[str], list[str]]:
    """(http URLs to fetch, in bundle order without repeats; other URLs, which are ignored)."""
    urls: list[str] = []
    ignored: list[str] = []
    for ca in cas:
        try:
            points = ca.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            continue
        for point in points:
            for name in point.full_name or ():
                if not isinstance(name, x509.UniformResourceIdentifier):
                    continue
                target = urls if name.value.lower().startswith("http://") else ignored
                if name.value not in target:
                    target.append(name.value)
    return urls, ignored


def _verify(data: bytes, index: int, url: str, ca_file: str) -> IssuerCRL:
    """Parse the body and check its signature against the bundle (in a thread)."""
    try:
        cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        return index_crl(index, parse_crl(data), cas, name=f"fetched CRL {index} ({url})")
    except (OSError, ValueError) as exc:
        raise FetchError(f"not a usable CRL: {exc}") from None


def next_refresh(crl: IssuerCRL, now: dt.datetime, interval: float) -> float:
    """Seconds until the next download: halfway to nextUpdate, at most `interval`, so a CRL
    reissued early (a new revocation) is seen within the interval."""
    if crl.next_update is None:
        return interval
    half = (crl.next_update - now).total_seconds() / 2
    return max(MIN_REFRESH_SECONDS, min(interval, half))


class CRLFetcher:
    """One schedule per distribution point. `on_change` gets every CRL held after a change."""

    def __init__(
        self,
        urls: Sequence[str],
        first_index: int,
        ca_file: str,
        session: aiohttp.ClientSession,
        interval: float,
        on_change: Callable[[tuple[IssuerCRL, ...]], None],
    ) -> None:
        self.sources = {first_index + i: url for i, url in enumerate(urls)}
        self._ca_file = ca_file
        self._session = session
        self._interval = interval
        self._on_change = on_change
        self.held: dict[int, IssuerCRL] = {}
        self._due = dict.fromkeys(self.sources, 0.0)
        for index, url in self.sources.items():
            metrics.CRL_FETCH_FAILURES.labels(index=str(index))
            metrics.CRL_FETCH_LAST_SUCCESS.labels(index=str(index)).set(0)
            log.info("tls.fetch_crls: CRL %d is fetched from %s", index, url)

    async def refresh(self, index: int) -> bool:
        """Download one CRL now; on failure the last good one stays. True on success."""
        url = self.sources[index]
        try:
            data = await get_bounded(
                self._session, url, limit=MAX_CRL_BYTES, time_limit=FETCH_TIMEOUT
            )
            crl = await asyncio.to_thread(_verify, data, index, url, self._ca_file)
            held = self.held.get(index)
            if held is not None and crl.last_update < held.last_update:
                raise FetchError("older than the CRL held (lastUpdate went back); not used")
        except FetchError as exc:
            metrics.CRL_FETCH_FAILURES.labels(index=str(index)).inc()
            self._due[index] = time.monotonic() + min(RETRY_SECONDS, self._interval)
            kept = "keeping the last good one" if index in self.held else "none held yet"
            log.warning("CRL %d from %s: fetch failed (%s); %s", index, url, exc, kept)
            return False
        self.held[index] = crl
        now = dt.datetime.now(dt.UTC)
        self._due[index] = time.monotonic() + next_refresh(crl, now, self._interval)
        metrics.CRL_FETCH_LAST_SUCCESS.labels(index=str(index)).set(time.time())
        self._on_change(tuple(self.held[i] for i in sorted(self.held)))
        return True

    async def refresh_all(self) -> None:
        """Every source at once (at start, before the listener takes connections)."""
        await asyncio.gather(*(self.refresh(index) for index in self.sources))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            due = [index for index, when in self._due.items() if when <= now]
            if due:
                await asyncio.gather(*(self.refresh(index) for index in due))
                continue
            wait = min(self._due.values(), default=now + self._interval) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

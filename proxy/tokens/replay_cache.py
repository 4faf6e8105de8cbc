"""Where DPoP proof identifiers (jti) are remembered for their window (RFC 9449 §11.1): in this
process, or in Redis when replicas must refuse each other's replays.

The key is a digest of the proof's key thumbprint and jti, so a client-chosen jti of any shape
becomes a fixed-size key and never reaches a log or Redis as written.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.tokens.dpop import b64url_sha256

_PREFIX = "certbound:dpop:jti:"


def replay_key(jkt: str, jti: str) -> str:
    return b64url_sha256(f"{jkt} {jti}".encode())


class ReplayCache:
    """jti values seen within the window, in this process only. Bounded: entries are inserted
    in time order and live equally long, so the oldest goes first."""

    def __init__(self, max_entries: int) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()  # key -> expiry (time.time())
        self._max = max_entries

    def first_use(self, key: str, expires: float, now: float | None = None) -> bool:
        """True and remembered when `key` was not seen (or has expired); False for a replay."""
        current = time.time() if now is None else now
        seen = self._seen
        while seen:
            oldest, expiry = next(iter(seen.items()))
            if expiry > current and len(seen) < self._max:
                break
            del seen[oldest]
        known = seen.get(key)
        if known is not None and known > current:
            return False
        seen[key] = expires
        seen.move_to_end(key)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class ReplayCacheUnavailable(Exception):
    """Redis did not record the jti in time; whether the proof is a replay is unknown."""


class SharedReplayCache:
    """jti values in Redis: one `SET key 1 NX PX ttl` per proof, which records the first use
    and tells a replay apart in one atomic round trip, whichever replica asks."""

    def __init__(self, url: str, timeout: float) -> None:
        self._timeout = timeout
        # No retries inside the budget: a proof waits at most `timeout`, then the configured
        # replay_cache_unavailable decides. The next request tries a fresh connection.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name="certbound",
        )
        parts = urlsplit(url)
        # For logs: never the password, which the URL may carry.
        self.where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"

    async def first_use(self, key: str, ttl_seconds: float) -> bool:
        """True when recorded now (first use), False when Redis already had it (a replay)."""
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._redis.set(
                    _PREFIX + key, b"1", nx=True, px=max(1, int(ttl_seconds * 1000))
                )
        except (TimeoutError, RedisError, OSError) as exc:
            raise ReplayCacheUnavailable(type(exc).__name__) from None
        return bool(answer)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                return bool(await self._redis.ping())
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()

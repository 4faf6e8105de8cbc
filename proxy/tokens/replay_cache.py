"""Where DPoP proof identifiers (jti) are remembered for their window (RFC 9449 §11.1): in this
process, or in Redis when replicas must refuse each other's replays.

The key is a digest of the proof's key thumbprint and jti, so a client-chosen jti of any shape
becomes a fixed-size key and never reaches a log or Redis as written.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from proxy.tokens.dpop import b64url_sha256
from proxy.tokens.resp import RedisAddress, RedisClient, RespError, command

_PREFIX = "certbound:dpop:jti:"


def replay_key(jkt: str, jti: str) -> str:
    return b64url_sha256(f"{jkt} {jti}".encode())


class ReplayCache:
    """jti values seen within the window, in this process only. Bounded: entries are inserted
    in time order and live about equally long, so the oldest goes first. An OrderedDict: a
    plain dict emptied from the front finds its first entry past every one deleted before."""

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
        if known is not None:
            if known > current:
                return False
            del seen[key]  # expired: entered again below, as the newest
        seen[key] = expires
        return True

    def __len__(self) -> int:
        return len(self._seen)


class ReplayCacheUnavailable(Exception):
    """Redis did not record the jti in time; whether the proof is a replay is unknown."""


class SharedReplayCache:
    """jti values in Redis: one `SET key 1 NX PX ttl` per proof, which records the first use
    and tells a replay apart in one atomic round trip, whichever replica asks."""

    def __init__(self, url: str, timeout: float) -> None:
        address = RedisAddress.parse(url)
        # No retries inside the budget: a proof waits at most `timeout`, then the configured
        # replay_cache_unavailable decides. The next proof tries a fresh connection.
        self._redis = RedisClient(address, timeout)
        self.where = address.shown  # for logs: never the password

    async def first_use(self, key: str, ttl_seconds: float) -> bool:
        """True when recorded now (first use), False when Redis already had it (a replay)."""
        ttl = str(max(1, int(ttl_seconds * 1000)))
        try:
            answer = await self._redis.call(command("SET", _PREFIX + key, "1", "NX", "PX", ttl))
        except (TimeoutError, RespError, OSError) as exc:
            raise ReplayCacheUnavailable(type(exc).__name__) from None
        if answer == b"OK":
            return True
        if answer is None:  # NX: the key was there
            return False
        raise ReplayCacheUnavailable("unexpected reply")

    async def ping(self) -> bool:
        try:
            return await self._redis.call(command("PING")) == b"PONG"
        except (TimeoutError, RespError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.close()

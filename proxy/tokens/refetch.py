"""How often an unknown `kid` may make us fetch the issuer's key set: a token bucket. Pure (the
caller passes the clock); the waiting and fetching are tokens/jwks.py's.

A few refetches back to back cover a rotation (one for the new kid, one more when the key was
published while a fetch was on the wire); after that, one per `tokens.jwks_min_refetch_seconds`.
A flood of forged kids therefore costs the issuer at most one fetch per interval per process,
and a real new kid waits at most that long instead of being refused.
"""

from __future__ import annotations

# Refetches a quiet key set may make back to back before the interval paces them.
REFETCH_BURST = 3.0


class RefetchBudget:
    """REFETCH_BURST refetches at once, then one more per `interval` seconds."""

    __slots__ = ("_available", "_updated", "interval")

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self._available = REFETCH_BURST
        self._updated = now

    def _refill(self, now: float) -> None:
        if self.interval <= 0:
            self._available = REFETCH_BURST
        else:
            gained = (now - self._updated) / self.interval
            self._available = min(REFETCH_BURST, self._available + max(gained, 0.0))
        self._updated = now

    def wait(self, now: float) -> float:
        """Seconds until a refetch is allowed (0 when one is allowed now)."""
        self._refill(now)
        return 0.0 if self._available >= 1 else (1 - self._available) * self.interval

    def take(self, now: float) -> None:
        """Spend one refetch (the caller waited `wait()` first)."""
        self._refill(now)
        self._available = max(self._available - 1, 0.0)

"""The caps on a listener's client connections: how many may be open, how many may be in
their TLS handshake. Decides who is refused or cut when a cap is reached; counts each by kind
and logs them, rate-limited. Knows nothing of TLS: the connection says when its handshake
is over and when it idles between requests.

At listen.max_connections, the connection idle longest is closed to admit the new one (as
nginx reuses keep-alive connections when it runs out); only when none is idle is the new one
refused. At listen.max_handshakes the oldest handshake in progress is cut: a flood of
half-open handshakes then lives max_handshakes / rate seconds each, while a real client's
handshake, which completes in a few round trips, goes through.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from proxy import metrics
from proxy.capacity import Caps

log = logging.getLogger("certbound.dataplane")

LOG_INTERVAL = 10.0  # seconds between two lines of one kind; every refusal is counted


class Admitted(Protocol):
    def cut(self) -> None:
        """End a connection still in its handshake, at once."""

    def is_idle(self) -> bool:
        """Between requests, with nothing in progress: closing it loses nothing."""

    def close(self) -> None: ...


class RefusalLog:
    """One line per kind at most every LOG_INTERVAL seconds, saying how many were not logged."""

    __slots__ = ("_next", "_unlogged")

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def refused(self, kind: str, message: str) -> None:
        metrics.CONNECTIONS_REFUSED.labels(kind=kind).inc()
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._next[kind] = now + LOG_INTERVAL
        more = self._unlogged.pop(kind, 0)
        suffix = f" ({more} more since the last line)" if more else ""
        log.warning("%s%s", message, suffix)


class Admission:
    __slots__ = ("caps", "handshake_timeout", "handshakes", "idle", "refusals")

    def __init__(self, caps: Caps, handshake_timeout: float) -> None:
        self.caps = caps
        self.handshake_timeout = handshake_timeout
        # Insertion-ordered: the first entry is the oldest handshake, the longest idle.
        self.handshakes: dict[Admitted, None] = {}
        self.idle: dict[Admitted, None] = {}
        self.refusals = RefusalLog()

    def admit(self, conn: Admitted, open_now: int, remote: str) -> bool:
        """A new connection from `remote` with `open_now` open: may it start its handshake?"""
        caps = self.caps
        if open_now >= caps.max_connections:
            if not self._close_longest_idle(remote):
                self.refusals.refused(
                    "connections",
                    f"refused a connection from {remote}: {caps.max_connections} connections "
                    "open, none idle (listen.max_connections, within the memory budget)",
                )
                return False
        if len(self.handshakes) >= caps.max_handshakes:
            oldest = next(iter(self.handshakes))
            self.handshake_over(oldest)
            oldest.cut()
            self.refusals.refused(
                "handshakes",
                f"cut the oldest TLS handshake in progress to admit one from {remote}: "
                f"{caps.max_handshakes} in progress (listen.max_handshakes, within the memory "
                "budget)",
            )
        self.handshakes[conn] = None
        metrics.HANDSHAKES_IN_PROGRESS.inc()
        return True

    def _close_longest_idle(self, remote: str) -> bool:
        while self.idle:
            conn = next(iter(self.idle))
            del self.idle[conn]
            if conn.is_idle():
                conn.close()
                self.refusals.refused(
                    "connections",
                    f"closed the connection idle longest to admit one from {remote}: "
                    f"{self.caps.max_connections} connections open (listen.max_connections, "
                    "within the memory budget)",
                )
                return True
        return False

    def handshake_over(self, conn: Admitted) -> None:
        """Completed, failed or cut: no longer counted as in progress."""
        if self.handshakes.pop(conn, False) is None:
            metrics.HANDSHAKES_IN_PROGRESS.dec()

    def idles(self, conn: Admitted) -> None:
        """Between requests now: the newest idle."""
        self.idle.pop(conn, None)
        self.idle[conn] = None

    def busy(self, conn: Admitted) -> None:
        self.idle.pop(conn, None)

    def forget(self, conn: Admitted) -> None:
        """The connection is gone."""
        self.handshake_over(conn)
        self.idle.pop(conn, None)

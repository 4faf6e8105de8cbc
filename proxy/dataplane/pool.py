"""The per-worker pool of keep-alive connections to the workload: its size, the FIFO queue of
requests waiting for a connection, the uploads' share, and idle connections swept."""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from urllib.parse import urlsplit

from proxy.dataplane.faults import UpstreamFault
from proxy.dataplane.upstream import KEEPALIVE_SECONDS, UpstreamConnection
from proxy.settings import UpstreamSettings


class UpstreamPool:
    """Keep-alive connections to the one workload, at most upstream.max_connections.

    Requests that find the pool full wait in one FIFO queue: a released connection is handed
    to the longest waiter, never taken by a newcomer. Requests whose body is still arriving
    (uploads that outgrew listen.request_buffer_bytes) may hold at most half of the pool, so
    slow uploads cannot starve everyone else.
    """

    def __init__(self, settings: UpstreamSettings) -> None:
        url = urlsplit(settings.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self.ssl = ssl.create_default_context()
        self.base_path = url.path.rstrip("/")
        self.authority = url.netloc.encode("idna")
        self.timeout = settings.timeout_seconds
        self.connect_timeout = settings.connect_timeout_seconds
        self.max_connections = settings.max_connections
        self.max_uploads = max(1, settings.max_connections // 2)
        self.uploads = 0  # connections serving a request whose body is still arriving
        self._idle: list[UpstreamConnection] = []  # LIFO: the warmest connection first
        self._open: set[UpstreamConnection] = set()
        self._connecting = 0  # slots reserved for connections being opened
        # Each waiter gets a released connection, or None: a slot reserved for it to open one.
        self._waiters: collections.deque[asyncio.Future[UpstreamConnection | None]] = (
            collections.deque()
        )
        self._upload_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def is_contended(self) -> bool:
        """Requests are waiting for a connection."""
        return bool(self._waiters)

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection now, unless others are queued for one (they come first)."""
        if self._waiters:
            return None
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_lost:
                return conn
        return None

    async def connect(self, *, fresh: bool = False) -> UpstreamConnection:
        """A connection for one exchange: idle, new, or the next one released, in turn.
        `fresh`: never one that served before (the one retry of a request)."""
        if not fresh:
            idle = self.take_idle()
            if idle is not None:
                return idle
        if not self._waiters and len(self._open) + self._connecting < self.max_connections:
            self._connecting += 1
        elif fresh and not self._waiters and self._idle:
            self._discard(self._idle.pop(0))  # the coldest idle one makes room
            self._connecting += 1
        else:
            conn = await self._wait_turn()
            if conn is None:
                pass  # the slot was reserved for us
            elif not fresh:
                return conn
            else:
                self._discard(conn)
                self._connecting += 1
        return await self._open_connection()

    async def _wait_turn(self) -> UpstreamConnection | None:
        waiter: asyncio.Future[UpstreamConnection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, self.timeout)
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())  # handed over as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise UpstreamFault("timeout") from None
            raise

    def _give_back(self, conn: UpstreamConnection | None) -> None:
        if conn is not None:
            self.release(conn)
        else:
            self._connecting -= 1
            self._wake()

    async def _open_connection(self) -> UpstreamConnection:
        """Open a connection in a slot already reserved (counted in _connecting)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            self._connecting -= 1
            self._wake()
            raise UpstreamFault("timeout") from None
        except OSError:
            self._connecting -= 1
            self._wake()
            raise UpstreamFault("connect") from None
        except BaseException:
            self._connecting -= 1
            self._wake()
            raise
        self._connecting -= 1
        self._open.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if conn.is_lost:
            return  # connection_lost has freed its slot
        if conn not in self._open:
            conn.close()  # discarded while it served
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # FIFO: straight to the longest waiter
                return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_SECONDS, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
            self._wake()

    def _discard(self, conn: UpstreamConnection) -> None:
        """Close a connection and free its slot now, not when its close completes."""
        self._open.discard(conn)
        conn.close()

    def _wake(self) -> None:
        """A slot is free: reserve it for the longest waiter."""
        if len(self._open) + self._connecting >= self.max_connections:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._connecting += 1
                waiter.set_result(None)
                return

    # -- the uploads' share ----------------------------------------------------------------

    async def upload_slot(self) -> None:
        """Wait (FIFO) until an upload may hold a connection; the caller then holds one slot
        of the uploads' share until upload_finished()."""
        if self.uploads < self.max_uploads and not self._upload_waiters:
            self.uploads += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._upload_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.timeout)
        except BaseException as exc:
            if waiter in self._upload_waiters:
                self._upload_waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.upload_finished()  # handed over as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise UpstreamFault("timeout") from None
            raise

    def upload_finished(self) -> None:
        while self._upload_waiters:
            waiter = self._upload_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; the count stays
                return
        self.uploads -= 1

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = time.monotonic() - KEEPALIVE_SECONDS
        for conn in [c for c in self._idle if c.idle_since < cutoff]:
            self._idle.remove(conn)
            conn.close()
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_SECONDS, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

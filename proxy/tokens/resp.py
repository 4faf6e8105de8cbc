"""A Redis connection for the few commands certbound sends (RESP2: AUTH, SELECT, SET, PING).

Why not redis-py: its asyncio client spent ~200 us of CPU per command on the bench machine
(connection pool, command objects, response callbacks), more than the DPoP proof check itself.
Here one connection carries every command, pipelined: each request writes one line and waits
for one reply, matched in order. Replies are parsed strictly and bounded; anything unexpected
closes the connection, and the next command opens a new one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

MAX_REPLY = 64 * 1024  # our commands' replies are a few bytes; a flood is not Redis


class RespError(Exception):
    """An error reply (`-ERR ...`), a broken reply or a lost connection."""


Reply = bytes | int | None  # simple or bulk string, integer, nil bulk string


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    tls: bool
    username: str
    password: str
    db: int

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """redis://[[user]:password@]host[:port][/db] or rediss:// (TLS). Raises ValueError
        (whose message never holds the password)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("must be a redis:// or rediss:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError("the path must be a database number")
        try:
            port = parts.port or 6379
        except ValueError:  # its message would quote the URL
            raise ValueError("the port must be a number from 1 to 65535") from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=parts.scheme == "rediss",
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            db=int(path or 0),
        )

    @property
    def shown(self) -> str:
        """For logs: never the password."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self.buffer = bytearray()
        self.is_closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while self.buffer:
                parsed = _parse(self.buffer)
                if parsed is None:
                    if len(self.buffer) > MAX_REPLY:
                        raise RespError("reply too long")
                    return
                reply, used = parsed
                del self.buffer[:used]
                if not self.waiting:
                    raise RespError("a reply nobody asked for")
                waiter = self.waiting.popleft()
                if not waiter.done():  # a caller that timed out has gone
                    if isinstance(reply, RespError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
        except RespError as exc:
            self.close(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._fail(RespError("connection lost"))

    def send(self, data: bytes) -> asyncio.Future[Reply]:
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self.is_closed or self.transport is None:
            waiter.set_exception(RespError("connection closed"))
            return waiter
        self.waiting.append(waiter)
        self.transport.write(data)
        return waiter

    def close(self, why: RespError) -> None:
        self.is_closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail(why)

    def _fail(self, why: RespError) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(why)


def _parse(buffer: bytearray) -> tuple[Reply | RespError, int] | None:
    """One reply from the front of `buffer` and its length, or None when incomplete."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    kind, line = bytes(buffer[:1]), bytes(buffer[1:end])
    if kind == b"+":
        return line, end + 2
    if kind == b"-":
        return RespError(line.decode("ascii", "replace")[:200]), end + 2
    if kind in (b":", b"$"):
        try:
            number = int(line)
        except ValueError:
            raise RespError("broken reply") from None
        if kind == b":":
            return number, end + 2
        if number == -1:
            return None, end + 2
        if not 0 <= number <= MAX_REPLY:
            raise RespError("broken reply")
        stop = end + 2 + number
        if len(buffer) < stop + 2:
            return None
        if buffer[stop : stop + 2] != b"\r\n":
            raise RespError("broken reply")
        return bytes(buffer[end + 2 : stop]), stop + 2
    raise RespError("unexpected reply type")  # arrays and RESP3 types: we never ask for them


class RedisClient:
    """One pipelined connection, opened on first use and again after any failure. Every call
    is bounded by `timeout` (connecting included); a timeout closes the connection, since a
    Redis that stopped answering would hold every later command behind the late one."""

    def __init__(self, address: RedisAddress, timeout: float) -> None:
        self.address = address
        self._timeout = timeout
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def call(self, data: bytes) -> Reply:
        conn = None
        try:
            async with asyncio.timeout(self._timeout):
                conn = self._conn
                if conn is None or conn.is_closed:
                    conn = await asyncio.shield(self._connect())
                return await conn.send(data)
        except TimeoutError:
            if conn is not None:  # only the connection this call waited on, not a newer one
                conn.close(RespError("timed out"))
                if self._conn is conn:
                    self._conn = None
            raise

    def _connect(self) -> asyncio.Task[_Protocol]:
        # Callers that arrive while one connects share it; a caller's timeout does not
        # cancel it for the others.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        return self._connecting

    async def _open(self) -> _Protocol:
        a = self.address
        context = ssl.create_default_context() if a.tls else None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            _, conn = await loop.create_connection(
                _Protocol, a.host, a.port, ssl=context, server_hostname=a.host if a.tls else None
            )
            try:
                if a.password:
                    auth = (a.username, a.password) if a.username else (a.password,)
                    await conn.send(command("AUTH", *auth))
                if a.db:
                    await conn.send(command("SELECT", str(a.db)))
            except BaseException:
                conn.close(RespError("set-up failed"))
                raise
        self._conn = conn
        return conn

    def _drop(self, why: RespError) -> None:
        if self._conn is not None:
            self._conn.close(why)
            self._conn = None

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self._drop(RespError("closed"))

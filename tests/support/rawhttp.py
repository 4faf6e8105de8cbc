"""A raw HTTP/1.1 client over a real TLS socket, for bytes that no well-behaved client sends."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int  # 0 when the server closed without a status line
    head: bytes
    body: bytes
    raw: bytes
    peer_der: bytes | None

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def bearer_request(
    token: str,
    method: str = "GET",
    path: str = "/orders",
    extra: str = "",
    *,
    length: int | None = None,
) -> bytes:
    """One request head with `Authorization: Bearer`, as raw bytes: `extra` header lines (each
    ending in CRLF) and a Content-Length when `length` is given."""
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + extra + "\r\n").encode()


def parse(raw: bytes, peer_der: bytes | None = None) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = 0
    if head.startswith(b"HTTP/1."):
        parts = head.split(b" ", 2)
        if len(parts) >= 2 and parts[1].isdigit():
            status = int(parts[1])
    return RawResponse(status, head, body, raw, peer_der)


async def raw_exchange(
    port: int,
    ctx: ssl.SSLContext,
    payload: bytes | list[bytes],
    *,
    host: str = "localhost",
    timeout: float = 5.0,
    pause: float = 0.0,
) -> RawResponse:
    """Send `payload` (or its pieces, `pause` seconds apart), read until the server closes."""
    server_hostname = host if host != "127.0.0.1" else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname),
        timeout,
    )
    ssl_object = writer.get_extra_info("ssl_object")
    peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    chunks = [payload] if isinstance(payload, bytes) else payload
    received = b""
    try:
        for piece in chunks:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionError, ssl.SSLError):
                    break
                if not data:
                    break
                received += data
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return parse(received, peer)


@dataclass
class RawServer:
    """A loopback HTTP server written on raw asyncio streams, so a subclass's `_handle` can
    break the protocol on purpose; stop() cuts the connections still open."""

    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

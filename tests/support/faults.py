"""Fault-test helpers: a proxy started in-process with adjusted settings, a raw asyncio
upstream that misbehaves on purpose, and a small HTTPS client that reports the peer cert."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import aiohttp

from proxy import server
from proxy.settings import Settings
from tests.support.rawhttp import RawServer
from tests.support.stack import PKI, Issuer, Running, Upstream, make_settings


@asynccontextmanager
async def proxy_with(
    pki: PKI,
    issuer: Issuer,
    upstream: Upstream,
    *,
    wait_keys: bool = True,
    adjust: Callable[[Settings], Settings] = lambda s: s,
) -> AsyncIterator[Running]:
    proxy = await server.start(adjust(make_settings(pki, issuer, upstream)))
    try:
        if wait_keys:
            await asyncio.wait_for(proxy.keys.wait_loaded(), 5)
        yield Running(proxy, pki, issuer, upstream)
    finally:
        await server.stop(proxy, grace_seconds=1)


def upstream_at(url: str, timeout: float = 2.0) -> Callable[[Settings], Settings]:
    def adjust(settings: Settings) -> Settings:
        return replace(
            settings,
            upstream=replace(
                settings.upstream, url=url, timeout_seconds=timeout, connect_timeout_seconds=1.0
            ),
        )

    return adjust


@dataclass
class RawUpstream(RawServer):
    """An HTTP/1.1 upstream written on raw asyncio streams, so it can break the protocol on
    purpose. Behaviour by path:
      /ok            200, Content-Length: 2, "ok"
      /close-now     closes the connection without answering
      /reset-cl      headers with Content-Length: 100000, 100 bytes, then close
      /reset-chunked a chunked response: one chunk, then close without the last chunk
      /stall-body    headers with Content-Length: 100000, 100 bytes, then silence
    """

    requests: list[str] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests.append(path)
                if path == "/ok":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    continue
                if path == "/close-now":
                    break
                if path in ("/reset-cl", "/stall-body"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
                elif path == "/reset-chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n"
                        + b"y" * 100 + b"\r\n"
                    )  # fmt: skip
                await writer.drain()
                if path == "/stall-body":
                    await asyncio.sleep(30)
                break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def admin_get(admin_url: str, path: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(admin_url + path) as resp:
        await resp.read()
        return resp.status

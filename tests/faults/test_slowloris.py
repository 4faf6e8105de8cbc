"""Slowloris: clients that dribble their request headers (or never finish the TLS handshake)
must not block anyone else, and must not hold a connection forever."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from proxy.settings import Settings
from tests.support.faults import proxy_with
from tests.support.stack import PKI, Issuer, Running, Upstream

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

HEADERS = b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 64


async def dribble(
    port: int, ctx: ssl.SSLContext, per_byte: float, total: float
) -> tuple[int, bool]:
    """Send header bytes one at a time; returns (bytes sent, closed by the server)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    sent, closed = 0, False
    deadline = time.monotonic() + total
    try:
        while time.monotonic() < deadline and sent < len(HEADERS):
            writer.write(HEADERS[sent : sent + 1])
            await writer.drain()
            sent += 1
            try:
                data = await asyncio.wait_for(reader.read(1024), per_byte)
            except TimeoutError:
                continue
            if not data:  # EOF: the server gave up on us
                closed = True
                break
    except (ConnectionError, ssl.SSLError):
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return sent, closed


async def timed_requests(running: Running, token: str, n: int) -> list[tuple[int, float]]:
    out = []
    for _ in range(n):
        started = time.monotonic()
        status, _, _ = await running.request(token=token)
        out.append((status, time.monotonic() - started))
        await asyncio.sleep(0.1)
    return out


async def test_slow_header_and_stalled_handshake_clients_do_not_block_others(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    async with proxy_with(pki, issuer, upstream) as r:
        token = issuer.mint(pki.alice)
        ctx = r.client_ssl("alice")
        # 10 clients sending their headers one byte per second ...
        slow = [asyncio.create_task(dribble(r.proxy.data_port, ctx, 1.0, 3.0)) for _ in range(10)]
        # ... and 10 that open TCP and never start TLS.
        stalled = [await asyncio.open_connection("127.0.0.1", r.proxy.data_port) for _ in range(10)]
        try:
            await asyncio.sleep(0.3)
            results = await timed_requests(r, token, 20)
        finally:
            for _, writer in stalled:
                writer.close()
        assert [s for s, _ in results] == [200] * 20
        assert max(t for _, t in results) < 1.0, results
        dribbled = await asyncio.gather(*slow)
        assert all(sent >= 2 for sent, _ in dribbled)  # they really were dribbling meanwhile
        assert len(upstream.seen) == 20  # none of the partial requests reached the upstream


def listen_with(**changes: object) -> Callable[[Settings], Settings]:
    def adjust(settings: Settings) -> Settings:
        return replace(settings, listen=replace(settings.listen, **changes))

    return adjust


async def test_connection_that_never_completes_its_headers_is_closed(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    # listen.idle_timeout_seconds defaults to 30 s; aiohttp's own default would be 3630 s.
    async with proxy_with(pki, issuer, upstream, adjust=listen_with(idle_timeout_seconds=1.0)) as r:
        ctx = r.client_ssl("alice")
        sent, closed = await dribble(r.proxy.data_port, ctx, 0.5, 3.0)
        assert closed, f"still open after {sent} bytes over 3 s"
        # Silent after the handshake: closed too.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", r.proxy.data_port, ssl=ctx, server_hostname="localhost"
        )
        try:
            assert await asyncio.wait_for(reader.read(1), 2.5) == b""
        finally:
            writer.close()
        assert upstream.seen == []


async def test_connections_over_the_cap_are_closed_and_counted(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    async with proxy_with(pki, issuer, upstream, adjust=listen_with(max_connections=3)) as r:
        refused = 'certbound_connections_refused_total{kind="connections"}'
        before = await r.metric(refused)
        held = [await asyncio.open_connection("127.0.0.1", r.proxy.data_port) for _ in range(3)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.proxy.data_port)
            assert await asyncio.wait_for(reader.read(1), 2) == b""  # closed at once
            writer.close()
            assert await r.metric(refused) == before + 1
        finally:
            for _, w in held:
                w.close()
        await asyncio.sleep(0.2)
        token = issuer.mint(pki.alice)
        assert (await r.request(token=token))[0] == 200  # slots are freed when they close

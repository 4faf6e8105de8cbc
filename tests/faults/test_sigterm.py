"""SIGTERM under load on a real `certbound run` process: requests in flight (long streaming
responses included) complete, the process exits 0, and /readyz says 503 while draining."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import ProxyProcess, proxy_process
from tests.support.stack import PKI, Issuer, Upstream, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STREAM = "/stream?chunks=50&pause=0.05"  # 50 KiB over ~2.5 s
STREAM_BYTES = 50 * 1024


def client(pki: PKI) -> aiohttp.ClientSession:
    import ssl

    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(*pki.files("alice"))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True))


async def long_stream(
    proc: ProxyProcess, pki: PKI, token: str, started: asyncio.Event
) -> tuple[int, int]:
    async with client(pki) as s:
        async with s.get(proc.url + STREAM, headers={"Authorization": f"Bearer {token}"}) as r:
            first = await r.content.read(1024)
            started.set()
            rest = await r.read()
            return r.status, len(first) + len(rest)


async def short_requests(proc: ProxyProcess, pki: PKI, token: str, log: list[str]) -> None:
    async with client(pki) as s:
        while True:
            try:
                async with s.get(
                    proc.url + "/x", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    await r.read()
                    log.append(f"{time.monotonic():.3f} {r.status}")
            except aiohttp.ClientError as exc:
                log.append(f"{time.monotonic():.3f} {type(exc).__name__}")
                return  # the listener is closed: the proxy is draining
            await asyncio.sleep(0.01)


def config(pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path) -> dict[str, object]:
    return process_config(pki, issuer, upstream, tmp_path)


async def test_sigterm_drains_in_flight_streams_and_exits_zero(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, config(pki, issuer, upstream, tmp_path)) as proc:
        started = [asyncio.Event() for _ in range(5)]
        streams = [asyncio.create_task(long_stream(proc, pki, token, e)) for e in started]
        shorts: list[list[str]] = [[] for _ in range(3)]
        loops = [asyncio.create_task(short_requests(proc, pki, token, log)) for log in shorts]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 5)
        await asyncio.sleep(0.2)
        assert all(any(line.endswith(" 200") for line in log) for log in shorts)

        os.kill(proc.proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*streams), 10)
        assert results == [(200, STREAM_BYTES)] * 5  # every in-flight stream completed whole
        code = await asyncio.to_thread(proc.proc.wait, 10)
        await asyncio.wait_for(asyncio.gather(*loops), 5)
        assert code == 0, proc.output()[-2000:]
        assert time.monotonic() - signalled < 5  # drained, not killed by the grace timer
    output = proc.output()
    assert "draining" in output and "stopped" in output
    # No short request that got an answer got anything but a 200.
    answered = [line.split()[1] for log in shorts for line in log if line.split()[1].isdigit()]
    assert answered and set(answered) == {"200"}


async def test_readyz_is_503_while_draining(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, config(pki, issuer, upstream, tmp_path)) as proc:
        started = asyncio.Event()
        stream = asyncio.create_task(long_stream(proc, pki, token, started))
        await asyncio.wait_for(started.wait(), 5)
        # A new connection per probe, as the kubelet does (a kept-alive one would hide a closed
        # listener).
        probe = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=probe) as s:
            async with s.get(proc.admin + "/readyz") as r:
                assert r.status == 200
            os.kill(proc.proc.pid, signal.SIGTERM)
            # The signal reaches the loop within a few milliseconds, not before os.kill
            # returns: under load a probe sent at once could still be answered as ready.
            await asyncio.sleep(0.1)
            seen: list[object] = []
            deadline = time.monotonic() + 1.4  # the stream keeps the drain going for ~2 s
            while time.monotonic() < deadline:
                try:
                    async with s.get(proc.admin + "/readyz") as r:
                        seen.append(r.status)
                except aiohttp.ClientError as exc:
                    seen.append(type(exc).__name__)
                await asyncio.sleep(0.1)
        assert (await stream) == (200, STREAM_BYTES)
        assert seen and set(seen) == {503}, seen
        assert await asyncio.to_thread(proc.proc.wait, 10) == 0

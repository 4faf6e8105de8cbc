"""The upstream misbehaves: down, refusing, slow, resetting mid-body. The client gets a 502/504
or a response it can tell is truncated (never a complete-looking one), the proxy keeps serving,
and certbound_upstream_errors_total{kind} counts each."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from tests.support.faults import RawUpstream, proxy_with, upstream_at
from tests.support.stack import PKI, Issuer, Running, Upstream

pytestmark = pytest.mark.e2e


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def errors(running: Running, kind: str) -> float:
    return await running.metric(f'certbound_upstream_errors_total{{kind="{kind}"}}')


async def stream_get(running: Running, path: str, token: str) -> tuple[int, int, str]:
    """Status, the Content-Length promised (or -1), and how reading the body ended."""
    connector = aiohttp.TCPConnector(ssl=running.client_ssl("alice"))
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.get(running.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
            promised = r.content_length if r.content_length is not None else -1
            try:
                body = await r.read()
            except aiohttp.ClientPayloadError as exc:
                return r.status, promised, f"truncated:{type(exc).__name__}"
            except aiohttp.ServerDisconnectedError:
                return r.status, promised, "truncated:disconnected"
            return r.status, promised, f"complete:{len(body)}"


@pytest.fixture
async def raw_upstream() -> RawUpstream:
    up = RawUpstream()
    await up.start()
    yield up  # type: ignore[misc]
    await up.stop()


async def test_upstream_down_is_502_and_comes_back_without_restart(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    from aiohttp import web

    port = closed_port()
    async with proxy_with(
        pki, issuer, upstream, adjust=upstream_at(f"http://127.0.0.1:{port}")
    ) as r:
        token = issuer.mint(pki.alice)
        before = await errors(r, "connect")
        for _ in range(3):
            status, headers, body = await r.request(token=token)
            assert status == 502 and body.startswith(b"502 upstream_connect:"), body
            assert "WWW-Authenticate" not in headers
        assert await errors(r, "connect") == before + 3
        # The workload comes up on that port: the same proxy forwards again.
        runner = web.AppRunner(upstream.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            status, _, body = await r.request(token=token)
            assert status == 200, body
        finally:
            await runner.cleanup()


async def test_upstream_that_accepts_and_closes_is_502_reset(
    pki: PKI, issuer: Issuer, upstream: Upstream, raw_upstream: RawUpstream
) -> None:
    async with proxy_with(pki, issuer, upstream, adjust=upstream_at(raw_upstream.url)) as r:
        token = issuer.mint(pki.alice)
        before = await errors(r, "reset")
        status, _, body = await r.request(path="/close-now", token=token)
        assert status == 502 and body.startswith(b"502 upstream_reset:"), body
        assert await errors(r, "reset") == before + 1
        assert (await r.request(path="/ok", token=token))[0] == 200


@pytest.mark.slow
async def test_slow_upstream_is_504_timeout_and_proxy_keeps_serving(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    async with proxy_with(pki, issuer, upstream, adjust=upstream_at(upstream.url, 0.5)) as r:
        token = issuer.mint(pki.alice)
        before = await errors(r, "timeout")
        upstream.delay = 1.5
        slow = [r.request(token=token) for _ in range(3)]
        results = await asyncio.gather(*slow)
        assert [s for s, _, _ in results] == [504, 504, 504]
        assert all(b.startswith(b"504 upstream_timeout:") for _, _, b in results)
        assert await errors(r, "timeout") == before + 3
        upstream.delay = 0
        assert (await r.request(token=token))[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "kind"),
    [("/reset-cl", "reset"), ("/reset-chunked", "reset"), ("/stall-body", "timeout")],
)
async def test_upstream_failing_mid_body_gives_a_truncated_response_the_client_detects(
    pki: PKI, issuer: Issuer, upstream: Upstream, raw_upstream: RawUpstream, path: str, kind: str
) -> None:
    async with proxy_with(pki, issuer, upstream, adjust=upstream_at(raw_upstream.url, 0.5)) as r:
        token = issuer.mint(pki.alice)
        before = await errors(r, kind)
        status, promised, ending = await stream_get(r, path, token)
        assert status == 200  # the status line had gone out before the upstream failed
        assert ending.startswith("truncated:"), ending
        if path != "/reset-chunked":
            assert promised == 100000  # the client knows how much was promised
        assert await errors(r, kind) == before + 1
        # The proxy keeps serving, on new connections and for other clients.
        assert (await r.request(path="/ok", token=token))[0] == 200
        assert await r.metric("certbound_in_flight_requests") == 0

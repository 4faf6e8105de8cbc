"""What a new user hit with the aiohttp-based path, now through a real `certbound run`
process driven by curl and by a WebSocket client: WebSocket upgrades, tokens with large
claims, form bodies, and version disclosure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.clients import client_ssl, curl, status_and_headers
from tests.support.process import ProxyProcess, metric, proxy_process
from tests.support.stack import NO_CREDENTIALS, PKI, Issuer, Upstream, process_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def proc(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> object:  # a generator fixture; typed loosely for pytest
    with proxy_process(tmp_path, process_config(pki, issuer, upstream, tmp_path)) as running:
        yield running


# --- WebSocket -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_websocket_upgrade_passes_the_checks_and_relays_both_ways(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess
) -> None:
    token = issuer.mint(pki.alice)
    connector = aiohttp.TCPConnector(ssl=client_ssl(pki))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(
            proc.url + "/ws", headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            assert await asyncio.to_thread(metric, proc, "certbound_upgraded_connections") == 1
            for text in ("hello", "x" * 100_000):
                await ws.send_str(text)
                assert (await ws.receive(timeout=5)).data == text.upper()
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await ws.receive(timeout=5)).data == b"\x02\x01\x00"
    seen = upstream.seen[-1]
    assert seen.path == "/ws"
    assert seen.headers["upgrade"] == ["websocket"]
    assert seen.headers["x-certbound-thumbprint"]  # identity headers went with the upgrade
    await asyncio.sleep(0.2)
    assert await asyncio.to_thread(metric, proc, "certbound_upgraded_connections") == 0
    forwarded = 'certbound_requests_total{issuer="0",outcome="forwarded",reason="ok"}'
    assert await asyncio.to_thread(metric, proc, forwarded) == 1


async def test_websocket_upgrade_without_a_bound_token_never_reaches_the_workload(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess
) -> None:
    token = issuer.mint(pki.alice)
    connector = aiohttp.TCPConnector(ssl=client_ssl(pki, "bob"))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(proc.url + "/ws", headers={"Authorization": f"Bearer {token}"})
    assert refused.value.status == 401
    assert upstream.seen == []


async def test_upgrade_to_a_protocol_not_listed_is_400_and_never_forwarded(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess
) -> None:
    token = issuer.mint(pki.alice)
    done = await curl(
        pki,
        "-H", f"Authorization: Bearer {token}",
        "-H", "Connection: Upgrade",
        "-H", "Upgrade: h2c",
        proc.url + "/orders",
    )  # fmt: skip
    status, _, body = status_and_headers(done)
    assert status == 400, done
    assert body.startswith("400 upgrade_not_allowed: upgrade to 'h2c' is not allowed")
    assert "forwarding.upgrade_protocols" in body
    assert upstream.seen == []


# --- large tokens ------------------------------------------------------------------------------


async def test_bound_token_with_a_12_kb_groups_claim_is_forwarded(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess
) -> None:
    """Enterprise identity providers put group lists in tokens; aiohttp's 8 KiB line limit
    answered these 400 "not valid HTTP/1.1"."""
    groups = [f"cn=group-{i:05d},ou=groups,dc=corp,dc=example" for i in range(300)]
    token = issuer.mint(pki.alice, groups=groups)
    assert len(json.dumps(groups)) > 12_000
    done = await curl(pki, "-H", f"Authorization: Bearer {token}", proc.url + "/orders")
    status, _, _ = status_and_headers(done)
    assert status == 200, done[:500]
    assert upstream.seen[-1].headers["x-certbound-subject"] == ["alice"]


async def test_headers_over_max_header_bytes_are_431_with_an_explanation_and_counted(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess
) -> None:
    token = issuer.mint(pki.alice)
    done = await curl(
        pki,
        "-H", f"Authorization: Bearer {token}",
        "-H", "X-Big: " + "a" * 70_000,
        proc.url + "/orders",
    )  # fmt: skip
    status, headers, body = status_and_headers(done)
    assert status == 431, done[:500]
    assert "listen.max_header_bytes" in body and "65536" in body
    assert "www-authenticate" not in headers  # not an authentication problem
    assert upstream.seen == []
    sample = 'certbound_requests_total{issuer="",outcome="rejected",reason="headers_too_large"}'
    assert metric(proc, sample) == 1


# --- form bodies -------------------------------------------------------------------------------


async def test_form_body_over_1_mib_streams_to_the_workload(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess, tmp_path: Path
) -> None:
    """curl --data-binary sends application/x-www-form-urlencoded; such bodies were buffered
    to look for a token and refused over 1 MiB. They stream like any other body now."""
    form = tmp_path / "form.txt"
    form.write_bytes(b"field=" + b"v" * (3 << 20) + b"&access_token=not-a-token")
    token = issuer.mint(pki.alice)
    done = await curl(
        pki, "-H", f"Authorization: Bearer {token}", "--data-binary", f"@{form}",
        proc.url + "/forms",
    )  # fmt: skip
    status, _, _ = status_and_headers(done)
    assert status == 200, done[:500]
    seen = upstream.seen[-1]
    assert seen.headers["content-type"] == ["application/x-www-form-urlencoded"]
    assert seen.body_bytes == form.stat().st_size


async def test_form_token_is_not_a_credential(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess
) -> None:
    token = issuer.mint(pki.alice)
    done = await curl(pki, "--data-urlencode", f"access_token={token}", proc.url + "/forms")
    status, headers, _ = status_and_headers(done)
    assert status == 401 and headers["www-authenticate"] == NO_CREDENTIALS
    assert upstream.seen == []


# --- version disclosure ------------------------------------------------------------------------


async def test_our_answers_carry_no_server_header_and_forwarded_ones_keep_the_workloads(
    pki: PKI, issuer: Issuer, upstream: Upstream, proc: ProxyProcess
) -> None:
    refused = await curl(pki, proc.url + "/orders")
    status, headers, _ = status_and_headers(refused)
    assert status == 401 and "server" not in headers
    token = issuer.mint(pki.alice)
    forwarded = await curl(pki, "-H", f"Authorization: Bearer {token}", proc.url + "/orders")
    status, headers, _ = status_and_headers(forwarded)
    assert status == 200
    assert headers["server"].startswith("Python/")  # the workload's (aiohttp) header, as sent
    admin = await curl(pki, proc.admin + "/healthz", who=None)
    assert admin.startswith("HTTP/1.1 200") and "server:" not in admin.lower()


# --- both event loops ------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_both_event_loops_serve_the_same_checks(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, loop: str
) -> None:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"event_loop": loop}
    with proxy_process(tmp_path, config) as running:
        token = issuer.mint(pki.alice)
        ok = await curl(
            pki, "-H", f"Authorization: Bearer {token}", running.url + "/a", running.url
        )
        assert ok.count("HTTP/1.1 200") == 2  # two requests on one kept-alive connection
        replay = await curl(pki, "-H", f"Authorization: Bearer {token}", running.url, who="bob")
        assert status_and_headers(replay)[0] == 401
        assert f"event loop {loop}" in running.output()
    assert [s.path for s in upstream.seen] == ["/a", "/"]

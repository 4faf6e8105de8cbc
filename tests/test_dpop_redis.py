"""The shared DPoP replay cache (dpop.replay_cache: redis://) against a real redis-server: two
certbound processes refuse each other's replays; Redis down, refusing or never answering is a
503 (or, with replay_cache_unavailable: allow, a counted pass); its password never shows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.settings import DPoPSettings
from tests.support.dpop_clients import BASE, Client, Holder
from tests.support.process import ProxyProcess, proxy_process
from tests.support.redis_server import PASSWORD, RedisServer
from tests.support.stack import (
    PKI,
    Issuer,
    Running,
    StartProxy,
    Upstream,
    make_settings,
    process_config,
)

pytestmark = pytest.mark.e2e


def rejected(reason: str) -> str:
    return f'certbound_requests_total{{issuer="0",outcome="rejected",reason="{reason}"}}'


def failures(outcome: str) -> str:
    return f'certbound_dpop_replay_cache_failures_total{{outcome="{outcome}"}}'


# --- two replicas, one Redis ----------------------------------------------------------------


@pytest.fixture
async def replicas(
    pki: PKI, issuer: Issuer, upstream: Upstream, redis: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[ProxyProcess, ProxyProcess]]:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["tls"]["client_cert"] = "optional"
    config["dpop"] = {"external_base_url": BASE, "replay_cache": redis.url}
    first = proxy_process(tmp_path, config)
    second = proxy_process(tmp_path, config)
    a = await asyncio.to_thread(first.__enter__)
    try:
        b = await asyncio.to_thread(second.__enter__)
        try:
            yield a, b
        finally:
            await asyncio.to_thread(second.__exit__, None, None, None)
    finally:
        await asyncio.to_thread(first.__exit__, None, None, None)


@pytest.mark.slow
async def test_a_proof_accepted_by_one_replica_is_refused_by_the_other(
    replicas: tuple[ProxyProcess, ProxyProcess],
    pki: PKI,
    issuer: Issuer,
    upstream: Upstream,
    redis: RedisServer,
) -> None:
    a, b = replicas
    holder = Holder(issuer, pki)
    proof = holder.proof()
    assert await holder.get(a, proof) == 200, holder.body
    assert await holder.get(b, proof) == 401
    assert holder.body.startswith(b"401 dpop_replayed:"), holder.body
    assert await holder.get(a, proof) == 401  # and by the first one, through Redis too
    assert holder.body.startswith(b"401 dpop_replayed:"), holder.body
    assert await holder.get(b, holder.proof()) == 200  # a fresh proof passes there
    assert len(upstream.seen) == 2

    # One key per proof, living as long as the proof's window and no longer.
    keys = redis.command("--scan", "--pattern", "certbound:dpop:jti:*").split()
    assert len(keys) == 2
    ttl = int(redis.command("PTTL", keys[0]))
    assert 0 < ttl <= (300 + 60) * 1000  # dpop.max_age_seconds + the issuer's leeway
    for replica in (a, b):
        assert PASSWORD not in replica.output()
        assert f"DPoP replay cache: redis://127.0.0.1:{redis.port}" in replica.output()


# --- Redis unavailable ----------------------------------------------------------------------


async def _start(start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream,
                 **dpop: Any) -> Running:  # fmt: skip
    tls = replace(make_settings(pki, issuer, upstream).tls, client_cert="optional")
    return await start_proxy(tls=tls, dpop=DPoPSettings(**dpop))


async def test_redis_down_refuses_with_503_until_it_is_back(
    start_proxy: StartProxy,
    pki: PKI,
    issuer: Issuer,
    upstream: Upstream,
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dpop = await _start(start_proxy, pki, issuer, upstream, replay_cache=redis.url)
    client = Client(dpop)
    assert (await client.send([client.proof()]))[0] == 200
    refused_before = await dpop.metric(failures("refused"))
    redis.stop()
    status, headers, body = await client.send([client.proof()])
    assert status == 503, body
    assert body.startswith(b"503 replay_cache_unavailable:"), body
    assert "WWW-Authenticate" not in headers  # not the client's fault: nothing to fix there
    assert len(dpop.upstream.seen) == 1
    assert await dpop.metric(failures("refused")) == refused_before + 1
    assert await dpop.metric(rejected("replay_cache_unavailable")) >= 1
    assert "did not answer" in caplog.text and PASSWORD not in caplog.text

    redis.start()  # same port: the next proof finds it again
    proof = client.proof()
    assert (await client.send([proof]))[0] == 200
    assert (await client.send([proof]))[2].startswith(b"401 dpop_replayed:")
    assert len(dpop.upstream.seen) == 2


async def test_redis_down_with_allow_forwards_and_counts(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    closed = RedisServer(tmp_path)  # never started: connection refused
    dpop = await _start(
        start_proxy,
        pki,
        issuer,
        upstream,
        replay_cache=closed.url,
        replay_cache_unavailable="allow",
    )
    assert await dpop.metric("certbound_dpop_replay_cache_unavailable_allowed") == 1
    allowed_before = await dpop.metric(failures("allowed"))
    client = Client(dpop)
    status, _, body = await client.send([client.proof()])
    assert status == 200, body
    assert await dpop.metric(failures("allowed")) == allowed_before + 1


async def test_redis_that_never_answers_costs_the_timeout_not_the_request(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, reads nothing, answers nothing

    blackhole = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = blackhole.sockets[0].getsockname()[1]
    try:
        dpop = await _start(
            start_proxy,
            pki,
            issuer,
            upstream,
            replay_cache=f"redis://127.0.0.1:{port}/0",
            replay_cache_timeout_seconds=0.2,
        )
        client = Client(dpop)
        started = time.monotonic()
        status, _, body = await client.send([client.proof()])
        assert status == 503, body
        assert body.startswith(b"503 replay_cache_unavailable:"), body
        assert time.monotonic() - started < 3
        assert dpop.upstream.seen == []
    finally:
        for writer in held:
            writer.close()
        blackhole.close()


async def test_a_wrong_redis_password_is_unavailable_and_never_logged(
    start_proxy: StartProxy,
    pki: PKI,
    issuer: Issuer,
    upstream: Upstream,
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = redis.url.replace(PASSWORD, "not-the-password-91c2")
    dpop = await _start(start_proxy, pki, issuer, upstream, replay_cache=wrong)
    client = Client(dpop)
    status, _, body = await client.send([client.proof()])
    assert status == 503, body
    assert dpop.upstream.seen == []
    assert "not-the-password-91c2" not in caplog.text

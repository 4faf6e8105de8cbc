"""SIGHUP on a real `certbound run`: the file is checked first; a good one is served from the
next request on while requests in flight finish on the old one; a bad one keeps the running
configuration and every problem is logged; keys that need a restart are named and refused;
with workers, every worker reloads. SIGTERM stays the drain (test_sigterm.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.process import ProxyProcess, proxy_process, sample, serving_workers, workers_of
from tests.support.stack import PKI, Issuer, Upstream, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# A route that needs a scope the test tokens do not carry: 403 once the reload is in force.
ADMIN_ONLY = {"routes": [{"path": "/**", "scopes": ["orders:admin"]}]}


def client(pki: PKI) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(*pki.files("alice"))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True))


async def statuses(proc: ProxyProcess, pki: PKI, token: str, n: int) -> list[int]:
    """n requests, a new connection each (with workers, the kernel spreads them)."""
    out = []
    async with client(pki) as s:
        for _ in range(n):
            async with s.get(proc.url + "/x", headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                out.append(r.status)
    return out


def config_file(proc: ProxyProcess) -> Path:
    return proc.log_path.with_suffix(".yaml")


def rewrite(proc: ProxyProcess, change: dict[str, Any]) -> None:
    path = config_file(proc)
    config = yaml.safe_load(path.read_text())
    config.update(change)
    path.write_text(yaml.safe_dump(config))


async def reloaded(proc: ProxyProcess, result: str, count: float) -> str:
    """SIGHUP, then the scrape once config_reloads_total{result} reached `count`."""
    os.kill(proc.proc.pid, signal.SIGHUP)
    series = f'certbound_config_reloads_total{{result="{result}"}}'
    deadline = time.monotonic() + 15
    while True:
        text = await asyncio.to_thread(proc.metrics)
        if sample(text, series) >= count:
            return text
        assert time.monotonic() < deadline, proc.output()[-3000:]
        await asyncio.sleep(0.1)


async def test_sighup_serves_the_new_file_and_lets_requests_in_flight_finish(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, process_config(pki, issuer, upstream, tmp_path)) as proc:
        assert await statuses(proc, pki, token, 3) == [200] * 3
        async with client(pki) as s:
            # A response streaming over ~2 s, started before the reload.
            async with s.get(
                proc.url + "/stream?chunks=40&pause=0.05",
                headers={"Authorization": f"Bearer {token}"},
            ) as streaming:
                first = await streaming.content.read(1024)
                rewrite(proc, {"policy": ADMIN_ONLY})
                await reloaded(proc, "success", 1)
                assert await statuses(proc, pki, token, 3) == [403] * 3
                rest = await streaming.read()
        assert streaming.status == 200 and len(first) + len(rest) == 40 * 1024
        assert proc.proc.poll() is None
        os.kill(proc.proc.pid, signal.SIGTERM)  # still the drain, after a reload too
        assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    output = proc.output()
    assert "configuration reloaded" in output and "stopped (SIGTERM)" in output


async def test_a_bad_file_keeps_the_running_configuration_and_logs_every_problem(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, process_config(pki, issuer, upstream, tmp_path)) as proc:
        rewrite(
            proc,
            {
                "policy": {**ADMIN_ONLY, "unmatched": "perhaps"},
                "upstream": {"url": "ftp://nowhere", "timeout_seconds": -1},
            },
        )
        text = await reloaded(proc, "failure", 1)
        assert sample(text, 'certbound_config_reloads_total{result="success"}') == 0
        assert await statuses(proc, pki, token, 3) == [200] * 3  # the old policy still serves
        assert proc.proc.poll() is None
        output = proc.output()
        for key in ("policy.unmatched", "upstream.url", "upstream.timeout_seconds"):
            assert f"reload refused: {key}:" in output, output[-3000:]


async def test_ports_and_workers_are_named_and_refused_until_a_restart(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, process_config(pki, issuer, upstream, tmp_path)) as proc:
        config = yaml.safe_load(config_file(proc).read_text())
        rewrite(
            proc,
            {
                "listen": {**config["listen"], "port": config["listen"]["port"] + 1, "workers": 2},
                "policy": ADMIN_ONLY,
            },
        )
        await reloaded(proc, "failure", 1)
        assert await statuses(proc, pki, token, 2) == [200] * 2  # nothing of the file applied
        output = proc.output()
        assert "reload refused: listen.port: changes only with a restart" in output
        assert "reload refused: listen.workers: changes only with a restart" in output


async def test_every_worker_reloads_and_a_bad_file_stops_at_the_supervisor(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"workers": 2}
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, config) as proc:
        workers = await serving_workers(proc, 2, 15)
        rewrite(proc, {"policy": {**ADMIN_ONLY, "unmatched": "perhaps"}})
        await reloaded(proc, "failure", 1)
        assert await statuses(proc, pki, token, 10) == [200] * 10
        rewrite(proc, {"policy": ADMIN_ONLY})
        await reloaded(proc, "success", 2)  # one success per worker
        assert await statuses(proc, pki, token, 20) == [403] * 20
        assert workers_of(proc) == workers  # reloaded in place, not restarted
        assert proc.proc.poll() is None
    assert "reload refused: policy.unmatched:" in proc.output()

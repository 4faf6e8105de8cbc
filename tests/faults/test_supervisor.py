"""Crash loops on a real `certbound run` with two workers: the supervisor restarts each dying
worker with a growing delay and never exits while it can restart; readiness fails only while no
worker serves; the restarts are counted; a good client keeps being answered meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import ProxyProcess, proxy_process, sample, serving_workers, workers_of
from tests.support.stack import PKI, Issuer, Upstream, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def readyz(proc: ProxyProcess) -> int | str:
    try:
        with urllib.request.urlopen(proc.admin + "/readyz", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__


async def good_client(proc: ProxyProcess, pki: PKI, token: str, log: list[int | str]) -> None:
    """A new connection per request (the kernel spreads them over the workers), 20 per second."""
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(*pki.files("alice"))
    connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        while True:
            try:
                async with s.get(
                    proc.url + "/x", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    await r.read()
                    log.append(r.status)
            except aiohttp.ClientError as exc:
                log.append(type(exc).__name__)
            await asyncio.sleep(0.05)


async def test_a_worker_killed_again_right_after_each_restart_is_restarted_and_the_proxy_serves(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"workers": 2}
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, config) as proc:
        workers = await serving_workers(proc, 2, 15)
        answers: list[int | str] = []
        client = asyncio.create_task(good_client(proc, pki, token, answers))
        try:
            victim = min(workers)
            for _ in range(3):  # the crash loop: kill, then kill the replacement ~1 s on
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while (replacement := workers_of(proc) - workers - {victim}) == set():
                    assert proc.proc.poll() is None, proc.output()[-3000:]
                    assert time.monotonic() < deadline, proc.output()[-3000:]
                    await asyncio.sleep(0.05)
                workers = workers_of(proc)
                victim = replacement.pop()
                await asyncio.sleep(1.0)
                assert proc.proc.poll() is None, proc.output()[-3000:]
            await serving_workers(proc, 2, 15)
        finally:
            client.cancel()
        text = await asyncio.to_thread(proc.metrics)
        assert sample(text, "certbound_worker_restarts_total") == 3
        assert readyz(proc) == 200
    # The other worker answered throughout: the good client was answered, and only requests
    # that a killed worker had accepted can have failed.
    assert answers.count(200) >= 0.8 * len(answers) and len(answers) > 40, answers
    failures = {"ClientConnectorError", "ClientOSError", "ServerDisconnectedError"}
    assert set(answers) <= {200} | failures, answers
    assert "restarting in" in proc.output()


async def test_readyz_fails_while_no_worker_serves_and_recovers_without_a_restart_of_the_pod(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"workers": 2}
    with proxy_process(tmp_path, config) as proc:
        await serving_workers(proc, 2, 15)
        # Both workers die twice in a row: the second deaths are short lives, so both wait
        # out a backoff (0.5 s) with no worker serving.
        for _ in range(2):
            for pid in workers_of(proc):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2
            while readyz(proc) == 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            seen_down = readyz(proc)
            assert seen_down != 200
            deadline = time.monotonic() + 10
            while len(workers_of(proc)) < 2:
                assert time.monotonic() < deadline, proc.output()[-3000:]
                await asyncio.sleep(0.02)
        assert proc.proc.poll() is None, proc.output()[-3000:]
        await serving_workers(proc, 2, 15)
        assert readyz(proc) == 200
        text = await asyncio.to_thread(proc.metrics)
        assert sample(text, "certbound_worker_restarts_total") == 4


async def test_a_worker_restarted_after_an_unreloaded_edit_runs_what_its_siblings_run(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    """Workers read the supervisor's copy of the last accepted file: a broken edit that was
    never reloaded cannot turn a restart into a crash loop."""
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"workers": 2}
    with proxy_process(tmp_path, config) as proc:
        workers = await serving_workers(proc, 2, 15)
        proc.log_path.with_suffix(".yaml").write_text("listen: {workers: 2\n")  # not YAML
        os.kill(min(workers), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not workers_of(proc) - workers:
            assert time.monotonic() < deadline, proc.output()[-3000:]
            await asyncio.sleep(0.05)
        await serving_workers(proc, 2, 15)
        text = await asyncio.to_thread(proc.metrics)
        assert sample(text, "certbound_worker_restarts_total") == 1

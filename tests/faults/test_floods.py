"""Floods against a real `certbound run` under the chart's defaults: TCP connections that never
speak, half-open TLS handshakes (a ClientHello, then nothing) and idle mTLS connections, each
past its cap. The process tree's peak RSS (VmHWM, from /proc) stays under the chart's memory
limit; refusals are counted by kind and logged, rate-limited; the handshakes in progress show
in their gauge; and a good client, opening a new connection for every request, is answered
throughout."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxy.capacity import connection_caps
from proxy.settings import ListenSettings
from tests.support.process import ProxyProcess, peak_rss, proxy_process, sample
from tests.support.stack import PKI, Issuer, Upstream, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


@dataclass(frozen=True)
class ChartDefaults:
    memory_limit_mib: int
    workers: int


def chart_defaults() -> ChartDefaults:
    """What helm/certbound/values.yaml gives the certbound container."""
    proxy = yaml.safe_load((ROOT / "helm" / "certbound" / "values.yaml").read_text())["proxy"]
    limit = str(proxy["resources"]["limits"]["memory"])
    assert limit.endswith("Mi"), limit
    return ChartDefaults(int(limit[:-2]), int(proxy["workers"]))


@contextlib.asynccontextmanager
async def flood(kind: str, proc: ProxyProcess, pki: PKI, n: int) -> AsyncIterator[str]:
    """`python -m bench.floods` holding n connections of `kind`; yields its first report.
    Its output is read off the event loop, where the good client runs."""
    cert, key = pki.files("alice")
    command = [sys.executable, "-m", "bench.floods", kind, "--port", str(proc.port), "-n", str(n)]
    # The rate (~410 a second): a burst faster than the proxy's CPU accepts would
    # overflow the kernel's accept queue, and dropped SYNs (retried after 1 s, 3 s) would
    # measure the CPU, not the caps.
    command += ["--rate", "500"]
    command += ["--ca", pki.ca_file, "--cert", cert, "--key", key]
    client = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        yield (await asyncio.to_thread(client.stdout.readline)).strip()
    finally:
        client.stdin.close()
        await asyncio.to_thread(client.wait, 30)


@dataclass
class GoodClient:
    """A new mTLS connection for every request, 20 a second: the hardest case during a flood."""

    proc: ProxyProcess
    pki: PKI
    token: str
    answers: list[int | str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    async def run(self) -> None:
        ctx = ssl.create_default_context(cafile=self.pki.ca_file)
        ctx.load_cert_chain(*self.pki.files("alice"))
        connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            while True:
                started = time.monotonic()
                try:
                    async with s.get(
                        self.proc.url + "/x", headers={"Authorization": f"Bearer {self.token}"}
                    ) as r:
                        await r.read()
                        self.answers.append(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.answers.append(type(exc).__name__)
                self.seconds.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

    def p99(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def run_flood(
    kind: str, n: int, pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> tuple[ProxyProcess, GoodClient, dict[str, float]]:
    chart = chart_defaults()
    config = process_config(pki, issuer, upstream, tmp_path)
    # No cgroup limit on the test machine: the budget certbound would read in the pod.
    config["listen"] = {"workers": chart.workers, "memory_budget_mib": chart.memory_limit_mib}
    with proxy_process(tmp_path, config) as proc:
        good = GoodClient(proc, pki, issuer.mint(pki.alice))
        task = asyncio.create_task(good.run())
        try:
            await asyncio.sleep(0.5)
            seen: dict[str, float] = {"gauge_max": 0.0}
            async with flood(kind, proc, pki, n) as report:
                for _ in range(10):  # the flood held for a second, the gauge watched
                    text = await asyncio.to_thread(proc.metrics)
                    gauge = sample(text, "certbound_handshakes_in_progress")
                    seen["gauge_max"] = max(seen["gauge_max"], gauge)
                    await asyncio.sleep(0.1)
                seen["peak_rss"] = peak_rss(proc.proc.pid)
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
        text = await asyncio.to_thread(proc.metrics)
        for kind_label in ("connections", "handshakes"):
            name = f'certbound_connections_refused_total{{kind="{kind_label}"}}'
            seen[kind_label] = sample(text, name)
    print(
        f"{kind} x{n}: {report}; peak RSS {seen['peak_rss'] / MIB:.0f} MiB; p99 {good.p99():.3f}s"
    )
    return proc, good, seen


def assert_bounded(seen: dict[str, float], good: GoodClient) -> None:
    limit = chart_defaults().memory_limit_mib * MIB
    assert seen["peak_rss"] < limit, f"peak RSS {seen['peak_rss'] / MIB:.0f} MiB"
    assert len(good.answers) >= 10 and set(good.answers) == {200}, good.answers
    assert good.p99() < 2.0, sorted(good.seconds)[-5:]


def caps() -> tuple[int, int]:
    chart = chart_defaults()
    c = connection_caps(ListenSettings(), chart.workers, chart.memory_limit_mib * MIB)
    return c.max_connections, c.max_handshakes


async def test_half_open_handshakes_past_the_cap_stay_under_the_memory_limit(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    _, max_handshakes = caps()
    proc, good, seen = await run_flood(
        "half-open", max_handshakes + 500, pki, issuer, upstream, tmp_path
    )
    assert_bounded(seen, good)
    assert seen["handshakes"] >= 500  # the oldest cut, one per handshake over the cap
    assert 0 < seen["gauge_max"] <= max_handshakes
    output = proc.output()
    assert "cut the oldest TLS handshake in progress" in output
    assert output.count("cut the oldest TLS handshake in progress") <= 3  # rate-limited


async def test_silent_tcp_connections_past_the_cap_stay_under_the_memory_limit(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    _, max_handshakes = caps()
    _, good, seen = await run_flood("tcp", max_handshakes + 500, pki, issuer, upstream, tmp_path)
    assert_bounded(seen, good)
    assert seen["handshakes"] >= 500
    assert 0 < seen["gauge_max"] <= max_handshakes


async def test_idle_mtls_connections_past_the_cap_stay_under_the_memory_limit(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    max_connections, _ = caps()
    proc, good, seen = await run_flood(
        "mtls", max_connections + 300, pki, issuer, upstream, tmp_path
    )
    assert_bounded(seen, good)
    assert seen["connections"] >= 300  # the idle longest closed, one per connection over
    assert "closed the connection idle longest" in proc.output()

"""Every metric, asserted after real traffic through the proxy and read from /metrics over HTTP."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.mmap_dict import MmapedDict

from proxy.tools.pki import make_ca
from tests.support.process import ProxyProcess, proxy_process
from tests.support.stack import PKI, Issuer, Running, Upstream, process_config

pytestmark = pytest.mark.e2e


async def scrape(running: Running) -> str:
    async with aiohttp.ClientSession() as s, s.get(running.admin + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def test_decisions_are_counted_by_outcome_and_reason(running: Running) -> None:
    before = await scrape(running)
    token = running.issuer.mint(running.pki.alice)
    await running.request(token=token)
    await running.request(token=token, who="bob")
    await running.request(token=None)
    after = await scrape(running)
    for outcome, reason, issuer in (
        ("forwarded", "ok", "0"),
        ("rejected", "thumbprint_mismatch", "0"),
        ("rejected", "no_token", ""),  # refused before a token named an issuer
    ):
        sample = (
            f'certbound_requests_total{{issuer="{issuer}",outcome="{outcome}",reason="{reason}"}}'
        )
        assert value(after, sample) - value(before, sample) == 1, sample


async def test_overhead_and_upstream_histograms_observe_each_forwarded_request(
    running: Running,
) -> None:
    before = await scrape(running)
    token = running.issuer.mint(running.pki.alice)
    for _ in range(3):
        assert (await running.request(token=token))[0] == 200
    after = await scrape(running)
    for name in ("certbound_overhead_seconds_count", "certbound_upstream_duration_seconds_count"):
        assert value(after, name) - value(before, name) == 3, name
    # The overhead buckets resolve sub-millisecond costs.
    assert 'certbound_overhead_seconds_bucket{le="0.0001"}' in after
    assert value(after, "certbound_overhead_seconds_sum") > value(
        before, "certbound_overhead_seconds_sum"
    )


@pytest.mark.slow
async def test_upstream_errors_are_counted_by_kind(running: Running) -> None:
    before = await scrape(running)
    token = running.issuer.mint(running.pki.alice)
    pool = running.proxy.plane.pool  # fresh: no kept-alive connection to the real upstream
    real, pool.port = pool.port, 1  # nothing listens on port 1
    assert (await running.request(token=token))[0] == 502
    pool.port = real
    running.upstream.delay = 3
    assert (await running.request(token=token))[0] == 504
    running.upstream.delay = 0
    after = await scrape(running)
    for kind in ("connect", "timeout"):
        sample = f'certbound_upstream_errors_total{{kind="{kind}"}}'
        assert value(after, sample) - value(before, sample) == 1, sample
    sample = (
        'certbound_requests_total{issuer="0",outcome="upstream_error",reason="upstream_timeout"}'
    )
    assert value(after, sample) - value(before, sample) == 1


@pytest.mark.slow
async def test_in_flight_and_open_connections_follow_live_traffic(running: Running) -> None:
    running.upstream.delay = 1.0
    token = running.issuer.mint(running.pki.alice)
    pending = [asyncio.create_task(running.request(token=token)) for _ in range(3)]
    await asyncio.sleep(0.5)
    during = await scrape(running)
    await asyncio.gather(*pending)
    running.upstream.delay = 0
    await asyncio.sleep(0.1)
    after = await scrape(running)
    assert value(during, "certbound_in_flight_requests") == 3
    assert value(during, "certbound_open_connections") == 3
    assert value(after, "certbound_in_flight_requests") == 0
    assert value(after, "certbound_open_connections") == 0


async def test_key_set_metrics(running: Running) -> None:
    before = await scrape(running)
    running.issuer.add_key("k2")
    await running.proxy.keys.refresh()
    running.issuer.available = False
    with pytest.raises(Exception, match="HTTP 503"):
        await running.proxy.keys.refresh()
    after = await scrape(running)
    ok = 'certbound_jwks_refresh_total{issuer="0",result="success"}'
    bad = 'certbound_jwks_refresh_total{issuer="0",result="failure"}'
    assert value(after, ok) - value(before, ok) == 1
    assert value(after, bad) - value(before, bad) == 1
    assert value(after, 'certbound_jwks_keys{issuer="0"}') == 2
    last = value(after, 'certbound_jwks_last_success_timestamp_seconds{issuer="0"}')
    assert abs(last - time.time()) < 10


async def test_certificate_expiry_and_build_info(running: Running) -> None:
    text = await scrape(running)
    serving = value(
        text, 'certbound_certificate_not_after_timestamp_seconds{index="0",role="serving"}'
    )
    ca = value(
        text, 'certbound_certificate_not_after_timestamp_seconds{index="0",role="client_ca"}'
    )
    assert serving == running.pki.server.cert.not_valid_after_utc.timestamp()
    assert ca == running.pki.ca.cert.not_valid_after_utc.timestamp()
    assert re.search(r'^certbound_build_info\{version="[0-9.]+"\} 1\.0$', text, re.M)


async def test_failed_handshakes_are_counted(running: Running) -> None:
    sample = 'certbound_tls_handshake_failures_total{reason="unknown_ca"}'
    before = value(await scrape(running), sample)
    with pytest.raises((aiohttp.ClientError, OSError)):
        await running.request(who="stranger", token="x")
    await asyncio.sleep(0.1)
    after = value(await scrape(running), sample)
    assert after > before


async def test_labels_never_carry_subjects_paths_or_thumbprints(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice, sub="very-unique-subject")
    await running.request(path="/very/unique/path", token=token)
    text = await scrape(running)
    for secret in ("very-unique-subject", "/very/unique/path", token, running.issuer.url):
        assert secret not in text


async def test_live_metrics_pass_promtool_check_metrics(running: Running) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required: run .ci/install-promtool.sh (scripts/test.sh does)"
    token = running.issuer.mint(running.pki.alice)
    await running.request(token=token)
    await running.request(token=None)
    text = await scrape(running)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
async def test_counts_add_up_across_worker_processes(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"workers": 2}
    metrics_dir = tmp_path / "metrics"
    token = issuer.mint(pki.alice)
    with proxy_process(
        tmp_path, config, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    ) as proc:
        # /readyz answered from one worker; wait until the other is listening too.
        deadline = time.monotonic() + 15
        while proc.output().count('"listening: mTLS') < 2:
            assert time.monotonic() < deadline, proc.output()
            await asyncio.sleep(0.1)
        ctx = Running.client_ssl(Running(None, pki, issuer, upstream), "alice")  # type: ignore[arg-type]
        for _ in range(40):  # a new connection each time, so the kernel spreads them
            connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as s:
                async with s.get(
                    proc.url + "/x", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    assert r.status == 200
        served: dict[str, float] = {}
        for path in metrics_dir.glob("counter_*.db"):
            values = MmapedDict(str(path), read_mode=True).read_all_values()
            served[path.name] = sum(
                v for key, v, _ in values if '"certbound_requests_total"' in key
            )
        assert sum(1 for n in served.values() if n > 0) == 2, f"both workers must serve: {served}"
        text = await asyncio.to_thread(proc.metrics)
    assert value(text, 'certbound_requests_total{issuer="0",outcome="forwarded",reason="ok"}') == 40
    assert len(upstream.seen) == 40


ALERTED_SERIES = (
    ("rejected", "thumbprint_mismatch", "0"),
    ("upstream_error", "upstream_connect", "0"),
    ("upstream_error", "upstream_timeout", ""),
    ("rejected", "no_token", ""),
)


def request_sample(outcome: str, reason: str, issuer: str) -> str:
    return f'certbound_requests_total{{issuer="{issuer}",outcome="{outcome}",reason="{reason}"}}'


@pytest.mark.slow
async def test_every_outcome_and_reason_series_exists_at_zero_before_its_first_event(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    """rate()/increase() cannot see the step from no series to the first count: the series an
    alert reads must be there, at 0, before the first mismatch or upstream error, with every
    worker count."""
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"workers": 2}
    with proxy_process(tmp_path, config) as proc:
        await wait_for_log(proc, '"listening: mTLS', 2)
        text = await asyncio.to_thread(proc.metrics)
    lines = text.splitlines()
    for outcome, reason, name in ALERTED_SERIES:
        assert f"{request_sample(outcome, reason, name)} 0.0" in lines, (outcome, reason, name)
    # Only pairs that can happen: a forwarded request is never a mismatch, and without
    # binding.mode report_only nothing is forwarded as report_only.
    assert request_sample("forwarded", "thumbprint_mismatch", "0") not in text
    assert 'outcome="report_only"' not in text


async def test_lifetime_used_by_the_presented_certificate_is_observed(running: Running) -> None:
    count = "certbound_client_cert_lifetime_elapsed_ratio_count"
    early = 'certbound_client_cert_lifetime_elapsed_ratio_bucket{le="0.25"}'
    before = await scrape(running)
    assert (await running.request(token=running.issuer.mint(running.pki.alice)))[0] == 200
    after = await scrape(running)
    assert value(after, count) - value(before, count) == 1
    assert value(after, early) - value(before, early) == 1  # alice's certificate is new


def test_an_issuer_that_only_introspects_exports_no_key_set_series() -> None:
    """tokens.accept_jwt false: a key set never loads, so a `0 keys` series would page about a
    healthy pod (issue 22, point 1)."""
    from prometheus_client import REGISTRY

    from proxy.settings import IssuerSettings, TokenSettings
    from proxy.tokens.jwks import KeySet

    opaque = IssuerSettings(name="opaque-only", issuer="https://as.example")
    KeySet(opaque, TokenSettings(accept_jwt=False), None)  # type: ignore[arg-type]
    verified = IssuerSettings(name="jwt-verified", issuer="https://as2.example")
    KeySet(verified, TokenSettings(accept_jwt=True), None)  # type: ignore[arg-type]
    for name in ("certbound_jwks_keys", "certbound_jwks_last_success_timestamp_seconds"):
        assert REGISTRY.get_sample_value(name, {"issuer": "opaque-only"}) is None, name
        assert REGISTRY.get_sample_value(name, {"issuer": "jwt-verified"}) == 0, name
    failures = {"issuer": "jwt-verified", "result": "failure"}
    assert REGISTRY.get_sample_value("certbound_jwks_refresh_total", failures) == 0


def scrape_all_workers(proc: ProxyProcess, times: int = 8) -> list[str]:
    """Several scrapes: the kernel hands each new admin connection to either worker."""
    return [proc.metrics() for _ in range(times)]


@pytest.mark.slow
async def test_a_client_ca_removed_on_reload_leaves_the_scrape_with_two_workers(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    """Gauge.clear() cannot reach into the multiprocess files; the series of a CA taken out of
    the bundle must still go from /metrics, whichever worker answers."""
    extra = make_ca("CA on its way out")
    bundle = tmp_path / "client-cas.pem"
    bundle.write_bytes(pki.ca.cert_pem + extra.cert_pem)
    config = process_config(pki, issuer, upstream, tmp_path)
    config["tls"]["client_ca_file"] = str(bundle)
    config["listen"] = {"workers": 2}
    removed = 'certbound_certificate_not_after_timestamp_seconds{index="1",role="client_ca"}'
    kept = 'certbound_certificate_not_after_timestamp_seconds{index="0",role="client_ca"}'
    with proxy_process(tmp_path, config) as proc:
        await wait_for_log(proc, '"listening: mTLS', 2)
        for text in await asyncio.to_thread(scrape_all_workers, proc, 4):
            assert value(text, removed) == extra.cert.not_valid_after_utc.timestamp()
        bundle.write_bytes(pki.ca.cert_pem)
        await wait_for_log(proc, "TLS files reloaded", 2)
        scrapes = await asyncio.to_thread(scrape_all_workers, proc)
        # clear() in multiprocess mode warns of what the scrape filter does: not for operators.
        assert "has not been implemented" not in proc.output()
    for text in scrapes:
        assert removed not in text
        assert value(text, kept) == pki.ca.cert.not_valid_after_utc.timestamp()


@pytest.mark.slow
async def test_process_memory_and_cpu_are_exported_per_process_with_two_workers(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["listen"] = {"workers": 2}
    with proxy_process(tmp_path, config) as proc:
        await wait_for_log(proc, '"listening: mTLS', 2)
        text = await asyncio.to_thread(proc.metrics)
        workers = children(proc.proc.pid)
    pids = set(re.findall(r'^process_resident_memory_bytes\{pid="(\d+)"\} [0-9.e+]+$', text, re.M))
    assert pids == {str(proc.proc.pid), *map(str, workers)}, text
    assert len(workers) == 2
    for pid in pids:
        assert value(text, f'process_cpu_seconds_total{{pid="{pid}"}}') > 0
    assert "python_gc_" not in text  # per process only, not summed: said in the docs


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def wait_for_log(proc: ProxyProcess, line: str, times: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while proc.output().count(line) < times:
        assert time.monotonic() < deadline, proc.output()
        await asyncio.sleep(0.1)


def test_series_of_an_issuer_no_longer_configured_are_retired() -> None:
    """A reload that builds a proxy without an issuer (server.start) takes its series away,
    and leaves the others."""
    from prometheus_client import REGISTRY

    from proxy import metrics

    metrics.create_request_series(("kept", "gone"), is_report_only=False)
    metrics.JWKS_KEYS.labels(issuer="gone").set(2)
    metrics.JWKS_KEYS.labels(issuer="kept").set(1)
    mismatch = {"outcome": "rejected", "reason": "thumbprint_mismatch"}
    metrics.retire(metrics.PER_ISSUER, "issuer", {"", "kept"})
    assert REGISTRY.get_sample_value("certbound_jwks_keys", {"issuer": "gone"}) is None
    assert REGISTRY.get_sample_value("certbound_jwks_keys", {"issuer": "kept"}) == 1
    assert (
        REGISTRY.get_sample_value("certbound_requests_total", {**mismatch, "issuer": "gone"})
        is None
    )
    assert (
        REGISTRY.get_sample_value("certbound_requests_total", {**mismatch, "issuer": "kept"}) == 0
    )

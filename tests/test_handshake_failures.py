"""Every refused handshake is diagnosable: a real `certbound run` process, curl and raw sockets
as peers; each reason asserted in certbound_tls_handshake_failures_total and in the log."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
from pathlib import Path

import pytest

from proxy.errors import HandshakeFailure
from proxy.tools.pki import issue
from proxy.trust import handshake
from tests.support.openssl_ca import Leaf, curl_status
from tests.support.process import ProxyProcess, proxy_process
from tests.support.stack import LOG, PKI, Issuer, Legacy, Running, Upstream, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def failures(text: str) -> dict[str, float]:
    found = re.findall(
        r'^certbound_tls_handshake_failures_total\{reason="(\w+)"\} (\S+)$', text, re.M
    )
    return {reason: float(value) for reason, value in found}


def leaf(pki: PKI, name: str) -> Leaf:
    cert, key = pki.files(name)
    return Leaf(Path(cert), Path(key))


@pytest.fixture
def strict_proc(
    pki: PKI, issuer: Issuer, upstream: Upstream, legacy: Legacy, tmp_path: Path
) -> object:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["tls"] |= {
        "client_ca_file": str(legacy.bundle),
        "x509_strict": True,
        "min_version": "1.3",
    }
    with proxy_process(tmp_path, config) as running:
        yield running


async def test_every_refusal_reason_is_counted_and_logged(
    strict_proc: ProxyProcess, pki: PKI, legacy: Legacy, tmp_path: Path
) -> None:
    proc = strict_proc
    now = dt.datetime.now(dt.UTC)
    future = issue(
        pki.ca,
        "future",
        not_before=now + dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=9),
    )
    future.write(tmp_path, "future")
    future_leaf = Leaf(tmp_path / "future.pem", tmp_path / "future.key")
    before = failures(await asyncio.to_thread(proc.metrics))
    assert set(before) == {r.value for r in HandshakeFailure}  # every series exists at zero
    assert set(before.values()) == {0.0}

    cases = {
        "no_certificate": (None, ()),
        "unknown_ca": (leaf(pki, "stranger"), ()),
        "expired": (leaf(pki, "expired"), ()),
        "not_yet_valid": (future_leaf, ()),
        "bad_purpose": (leaf(pki, "server_only"), ()),
        "strict_violation": (legacy.leaf, ()),
        "protocol_version": (leaf(pki, "alice"), ("--tls-max", "1.2")),
    }
    for reason, (who, extra) in cases.items():
        code, status, err = await curl_status(proc.url + "/orders", pki.ca_file, who, *extra)
        assert code != 0 and status == "000", (reason, err)
    # Plain HTTP to the mTLS port gets a readable 400, as nginx gives.
    code, status, _ = await curl_status(
        f"http://localhost:{proc.port}/orders", pki.ca_file, leaf(pki, "alice")
    )
    assert status == "400"
    # A client that leaves halfway through its hello.
    with socket.create_connection(("127.0.0.1", proc.port)) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01")
    await asyncio.sleep(0.5)

    after = failures(await asyncio.to_thread(proc.metrics))
    expected = {*cases, "not_tls", "other"}
    for reason in HandshakeFailure:
        delta = after[reason.value] - before[reason.value]
        assert delta == (1.0 if reason.value in expected else 0.0), (reason, after)

    log = proc.output()
    lines = {
        m.group(1): m.group(0)
        for m in re.finditer(r"TLS handshake refused: reason=(\w+) peer=127\.0\.0\.1: .*", log)
    }
    assert set(lines) == expected, log
    assert "unable to get local issuer certificate (X509_V_ERR 20)" in lines["unknown_ca"]
    assert "certificate has expired (X509_V_ERR 10)" in lines["expired"]
    assert "certificate is not yet valid" in lines["not_yet_valid"]
    assert "(X509_V_ERR 9)" in lines["not_yet_valid"]
    assert "unsuitable certificate purpose (X509_V_ERR 26)" in lines["bad_purpose"]
    assert "Missing Authority Key Identifier (X509_V_ERR 85)" in lines["strict_violation"]
    assert "the client sent no certificate" in lines["no_certificate"]
    assert "TLS version not accepted" in lines["protocol_version"]
    assert "plain HTTP" in lines["not_tls"]
    assert "left during the handshake" in lines["other"]


async def test_repeated_refusals_are_counted_each_time_but_logged_once_a_minute(
    strict_proc: ProxyProcess, pki: PKI
) -> None:
    for _ in range(3):
        await curl_status(strict_proc.url, pki.ca_file, leaf(pki, "stranger"))
    await asyncio.sleep(0.2)
    assert failures(await asyncio.to_thread(strict_proc.metrics))["unknown_ca"] == 3
    assert strict_proc.output().count("reason=unknown_ca") == 1


async def test_handshake_timeout_is_counted_and_logged(running: Running) -> None:
    running.proxy.plane.admission.handshake_timeout = 0.3  # listen.handshake_timeout_seconds
    handshake.reset_rate_limit()
    before = await running.metric('certbound_tls_handshake_failures_total{reason="timeout"}')
    _, writer = await asyncio.open_connection("127.0.0.1", running.proxy.data_port)
    writer.write(b"\x16\x03\x01")  # the start of a record, then nothing
    await asyncio.sleep(0.8)
    writer.close()
    after = await running.metric('certbound_tls_handshake_failures_total{reason="timeout"}')
    assert after == before + 1
    assert any("reason=timeout" in line and "within 0.3 s" in line for line in LOG.lines)


def test_verify_codes_map_to_reasons() -> None:
    assert handshake.verify_code_reason(85) is HandshakeFailure.STRICT_VIOLATION
    assert handshake.verify_code_reason(22) is HandshakeFailure.CHAIN_TOO_LONG
    assert handshake.verify_code_reason(999) is HandshakeFailure.OTHER

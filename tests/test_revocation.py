"""Revocation from CRL files: a CA run with `openssl ca` (index file, -revoke, -gencrl), real
`certbound run` processes, curl as the client."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from proxy.settings import TLSSettings
from proxy.trust.identity import thumbprint_of_pem
from proxy.trust.revocation import RevocationConfigError, Status, load_crls, parse_crl
from proxy.trust.tls import TLSConfigError, load_revocation
from tests.support.openssl_ca import Leaf, OpenSSLCA, curl_status
from tests.support.process import ProxyProcess, proxy_process
from tests.support.stack import PKI, Issuer, Upstream, orders_status, process_config

pytestmark = pytest.mark.e2e


@dataclass
class RevokingCA:
    ca: OpenSSLCA
    good: Leaf
    revoked: Leaf
    bundle: Path  # the test CA (serving side) and this CA
    crl: Path  # a CRL listing `revoked`


@pytest.fixture
def revoking(pki: PKI, tmp_path: Path) -> RevokingCA:
    ca = OpenSSLCA(tmp_path / "ca", "revoking CA")
    good, revoked = ca.issue("good client"), ca.issue("revoked client")
    ca.revoke(revoked)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem + ca.cert.read_bytes())
    return RevokingCA(ca, good, revoked, bundle, ca.gencrl(tmp_path / "ca.crl"))


def config(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, r: RevokingCA, **tls: Any
) -> dict[str, Any]:
    made = process_config(pki, issuer, upstream, tmp_path)
    made["tls"] |= {"client_ca_file": str(r.bundle), "crl_files": [str(r.crl)], **tls}
    return made


def failures(proc: ProxyProcess, reason: str) -> float:
    match = re.search(
        rf'^certbound_tls_handshake_failures_total\{{reason="{reason}"\}} (\S+)$',
        proc.metrics(),
        re.M,
    )
    assert match, reason
    return float(match.group(1))


def serial_of(leaf: Leaf) -> str:
    return f"{x509.load_pem_x509_certificate(leaf.cert.read_bytes()).serial_number:x}"


# ------------------------------------------------------------------------- pure lookups


def test_crl_lookup_good_revoked_stale_and_unknown_issuer(
    revoking: RevokingCA, pki: PKI, tmp_path: Path
) -> None:
    crls = load_crls([str(revoking.crl)], str(revoking.bundle))
    now = dt.datetime.now(dt.UTC)

    def cert(leaf: Leaf) -> x509.Certificate:
        return x509.load_pem_x509_certificate(leaf.cert.read_bytes())

    assert crls.check(cert(revoking.good), now).status is Status.GOOD
    assert crls.check(cert(revoking.revoked), now).status is Status.REVOKED
    later = now + dt.timedelta(days=2)  # the CRL says nextUpdate in 24 hours
    verdict = crls.check(cert(revoking.good), later)
    assert verdict.status is Status.UNKNOWN and "past its nextUpdate" in verdict.why
    # Revoked stays revoked even from a stale CRL.
    assert crls.check(cert(revoking.revoked), later).status is Status.REVOKED
    assert crls.check(pki.alice.cert, now).status is Status.UNKNOWN  # no CRL for test CA


def test_der_crl_is_read_like_pem(revoking: RevokingCA, tmp_path: Path) -> None:
    der = revoking.ca.gencrl(tmp_path / "ca.der.crl", der=True)
    assert not der.read_bytes().startswith(b"-----")
    crls = load_crls([str(der)], str(revoking.bundle))
    [crl] = crls.crls
    assert len(crl.revoked) == 1


def test_crl_not_signed_by_a_bundle_ca_is_refused_with_the_key_named(
    revoking: RevokingCA, pki: PKI, tmp_path: Path
) -> None:
    other = OpenSSLCA(tmp_path / "other", "other openssl CA")
    foreign = other.gencrl(tmp_path / "foreign.crl")
    with pytest.raises(RevocationConfigError, match=r"tls.crl_files\[0\]: .*not a CA of"):
        load_crls([str(foreign)], str(revoking.bundle))
    garbage = tmp_path / "garbage.crl"
    garbage.write_bytes(b"not a crl")
    with pytest.raises(RevocationConfigError, match=r"tls.crl_files\[1\]: .*not a usable CRL"):
        load_crls([str(revoking.crl), str(garbage)], str(revoking.bundle))
    # A CRL whose issuer name matches but whose signature is another key's.
    impostor = OpenSSLCA(tmp_path / "impostor", "revoking CA")
    forged = impostor.gencrl(tmp_path / "forged.crl")
    with pytest.raises(RevocationConfigError, match="signature does not verify"):
        load_crls([str(forged)], str(revoking.bundle))
    cert, key = pki.files("server")
    settings = TLSSettings(
        cert_file=cert, key_file=key, client_ca_file=str(revoking.bundle), crl_files=(str(forged),)
    )
    with pytest.raises(TLSConfigError, match=r"tls.crl_files\[0\]"):
        load_revocation(settings)


def test_parse_crl_refuses_two_crls_in_one_file(revoking: RevokingCA) -> None:
    pem = revoking.crl.read_bytes()
    with pytest.raises(ValueError, match="one CRL"):
        parse_crl(pem + pem)


# ------------------------------------------------------------------------- real processes


@pytest.mark.slow
async def test_revoked_certificate_is_refused_and_a_good_one_served(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, revoking: RevokingCA
) -> None:
    with proxy_process(tmp_path, config(pki, issuer, upstream, tmp_path, revoking)) as proc:
        assert await orders_status(proc, pki, issuer, revoking.good) == "200"
        assert await orders_status(proc, pki, issuer, revoking.revoked) == "000"
        assert upstream.seen and len(upstream.seen) == 1
        assert await asyncio.to_thread(failures, proc, "revoked") == 1
        text = await asyncio.to_thread(proc.metrics)
        assert 'certbound_revocation_checks_total{result="good"} 1.0' in text
        assert 'certbound_revocation_checks_total{result="revoked"} 1.0' in text
        crl = parse_crl(revoking.crl.read_bytes())
        match = re.search(
            r'^certbound_crl_next_update_timestamp_seconds\{index="0"\} (\S+)$', text, re.M
        )
        assert match and float(match.group(1)) == crl.next_update_utc.timestamp()
        assert "certbound_revocation_unavailable_allowed 0.0" in text
        line = next(x for x in proc.output().splitlines() if "reason=revoked" in x)
        assert "serial is on the CRL tls.crl_files[0]" in line
        assert "subject='CN=revoked client'" in line
        assert f"serial={serial_of(revoking.revoked)}" in line
        assert "x5t#S256=" + thumbprint_of_pem(revoking.revoked.cert.read_bytes()) in line


@pytest.mark.slow
async def test_crl_replaced_on_disk_while_traffic_runs_applies_to_new_connections(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, revoking: RevokingCA
) -> None:
    with proxy_process(tmp_path, config(pki, issuer, upstream, tmp_path, revoking)) as proc:
        assert await orders_status(proc, pki, issuer, revoking.good) == "200"
        revoking.ca.revoke(revoking.good)
        revoking.ca.gencrl(revoking.crl)  # an atomic rename, as a Secret update is
        deadline = time.monotonic() + 15
        while await orders_status(proc, pki, issuer, revoking.good) == "200":
            assert time.monotonic() < deadline, "the new CRL was never picked up"
            await asyncio.sleep(0.3)
        assert "TLS files reloaded" in proc.output()
        # A broken CRL on disk is refused and the last good one stays in force.
        revoking.crl.write_bytes(b"garbage")
        await asyncio.sleep(3)
        assert "cannot be used; keeping the old ones" in proc.output()
        assert await orders_status(proc, pki, issuer, revoking.good) == "000"
        assert await orders_status(proc, pki, issuer, revoking.revoked) == "000"


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["refuse", "allow"])
async def test_stale_crl_follows_revocation_unavailable(
    pki: PKI,
    issuer: Issuer,
    upstream: Upstream,
    tmp_path: Path,
    revoking: RevokingCA,
    policy: str,
) -> None:
    now = dt.datetime.now(dt.UTC)
    revoking.ca.gencrl(
        revoking.crl,
        last_update=now - dt.timedelta(days=3),
        next_update=now - dt.timedelta(days=1),
    )
    made = config(pki, issuer, upstream, tmp_path, revoking, revocation_unavailable=policy)
    with proxy_process(tmp_path, made) as proc:
        status = await orders_status(proc, pki, issuer, revoking.good)
        # A certificate on the CRL stays refused whatever the policy: the CRL still says so.
        assert await orders_status(proc, pki, issuer, revoking.revoked) == "000"
        text = await asyncio.to_thread(proc.metrics)
        unknown = await asyncio.to_thread(failures, proc, "revocation_unknown")
        log = proc.output()
        if policy == "refuse":
            assert status == "000"
            assert unknown == 1
            line = next(x for x in log.splitlines() if "reason=revocation_unknown" in x)
            assert "past its nextUpdate" in line and "subject='CN=good client'" in line
            assert "certbound_revocation_unavailable_allowed 0.0" in text
        else:
            assert status == "200"
            assert unknown == 0
            assert "tls.revocation_unavailable is allow" in log  # loud at start
            assert "accepted because tls.revocation_unavailable is allow" in log
            assert "certbound_revocation_unavailable_allowed 1.0" in text
        assert 'certbound_revocation_checks_total{result="unknown"} 1.0' in text


@pytest.mark.slow
async def test_certificate_of_a_ca_without_a_crl_is_unknown_and_refused(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, revoking: RevokingCA
) -> None:
    with proxy_process(tmp_path, config(pki, issuer, upstream, tmp_path, revoking)) as proc:
        alice = Leaf(*(Path(p) for p in pki.files("alice")))
        _, status, _ = await curl_status(
            proc.url + "/orders", pki.ca_file, alice, token=issuer.mint(pki.alice)
        )
        assert status == "000"
        assert (
            "no CRL (tls.crl_files or tls.fetch_crls) for the certificate's issuer" in proc.output()
        )


def test_check_config_reports_an_unusable_crl(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, revoking: RevokingCA
) -> None:
    import subprocess
    import sys

    import yaml

    made = config(pki, issuer, upstream, tmp_path, revoking)
    revoking.crl.write_bytes(b"garbage")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(made))
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "tls.crl_files[0]" in done.stderr and "not a usable CRL" in done.stderr

"""tls.fetch_crls: CRLs downloaded from the CRL Distribution Points of an `openssl ca` CA,
served by a real HTTP server on loopback; the fetcher alone, then a `certbound run` process
driven by curl."""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from cryptography import x509

from proxy import metrics
from proxy.trust.crlfetch import MAX_CRL_BYTES, CRLFetcher, distribution_points
from proxy.trust.revocation import CRLSet, IssuerCRL, Status
from tests.support.openssl_ca import Leaf, OpenSSLCA
from tests.support.process import proxy_process
from tests.support.revocation_servers import DistributionPoint, distribution_point
from tests.support.stack import PKI, Issuer, Upstream, orders_status, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@dataclass
class FetchedCA:
    ca: OpenSSLCA
    good: Leaf
    revoked: Leaf
    bundle: Path
    point: DistributionPoint


@pytest.fixture
def fetched(pki: PKI, tmp_path: Path) -> Iterator[FetchedCA]:
    with distribution_point() as point:
        ca = OpenSSLCA(tmp_path / "ca", "fetched CA", crl_url=point.url("ca.crl"))
        good, revoked = ca.issue("good client"), ca.issue("revoked client")
        ca.revoke(revoked)
        point.bodies["ca.crl"] = ca.gencrl(tmp_path / "ca.crl", der=True).read_bytes()
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(pki.ca.cert_pem + ca.cert.read_bytes())
        yield FetchedCA(ca, good, revoked, bundle, point)


def cert(leaf: Leaf) -> x509.Certificate:
    return x509.load_pem_x509_certificate(leaf.cert.read_bytes())


def fetch_failures(index: int) -> float:
    return metrics.CRL_FETCH_FAILURES.labels(index=str(index))._value.get()


def test_distribution_points_are_read_from_the_bundle_and_only_http_is_used(
    fetched: FetchedCA, pki: PKI, tmp_path: Path
) -> None:
    other = OpenSSLCA(tmp_path / "other", "ldap CA", crl_url="ldap://ldap.example/cn=CRL")
    cas = [
        pki.ca.cert,
        cert(Leaf(fetched.ca.cert, fetched.ca.cert)),
        cert(Leaf(other.cert, other.cert)),
    ]
    urls, ignored = distribution_points(cas)
    assert urls == [fetched.point.url("ca.crl")]
    assert ignored == ["ldap://ldap.example/cn=CRL"]


async def test_fetch_keeps_the_last_good_crl_and_refuses_what_it_cannot_use(
    fetched: FetchedCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[tuple[IssuerCRL, ...]] = []
    async with aiohttp.ClientSession() as session:

        def fetcher(path: str) -> CRLFetcher:
            url = fetched.point.url(path)
            return CRLFetcher([url], 3, str(fetched.bundle), session, 3600, changes.append)

        good = fetcher("ca.crl")
        assert await good.refresh(3)
        [held] = changes[-1]
        assert held.index == 3 and held.name.startswith("fetched CRL 3 (http://127.0.0.1:")
        crls, now = CRLSet(changes[-1]), dt.datetime.now(dt.UTC)
        assert crls.check(cert(fetched.revoked), now).status is Status.REVOKED
        assert crls.check(cert(fetched.good), now).status is Status.GOOD
        assert metrics.CRL_FETCH_LAST_SUCCESS.labels(index="3")._value.get() > 0

        # The distribution point goes down: the fetch fails, the last good CRL stays.
        before = fetch_failures(3)
        fetched.point.stop()
        with caplog.at_level(logging.WARNING, "certbound.tls"):
            assert not await good.refresh(3)
        assert good.held[3] is held and len(changes) == 1
        assert fetch_failures(3) == before + 1
        assert "fetch failed (ClientConnectorError" in caplog.text
        assert "keeping the last good one" in caplog.text
        fetched.point.start()

        # Over the size bound, announced by Content-Length or only found while reading.
        fetched.point.bodies["big.crl"] = b"0" * (MAX_CRL_BYTES + 1)
        fetched.point.bodies["big.chunked"] = b"0" * (MAX_CRL_BYTES + 1)
        foreign = OpenSSLCA(tmp_path / "foreign", "foreign CA")
        fetched.point.bodies["foreign.crl"] = foreign.gencrl(tmp_path / "f.crl").read_bytes()
        fetched.point.bodies["garbage.crl"] = b"not a CRL"
        cases = {
            "big.crl": f"Content-Length {MAX_CRL_BYTES + 1} over {MAX_CRL_BYTES} bytes",
            "big.chunked": f"larger than {MAX_CRL_BYTES} bytes",
            "foreign.crl": "not a usable CRL: issued by CN=foreign CA, not a CA of the bundle",
            "garbage.crl": "not a usable CRL",
            "missing.crl": "HTTP status 404",
        }
        for path, why in cases.items():
            caplog.clear()
            with caplog.at_level(logging.WARNING, "certbound.tls"):
                assert not await fetcher(path).refresh(3), path
            assert why in caplog.text, (path, caplog.text)
            assert "none held yet" in caplog.text
        assert len(changes) == 1

        # A CRL older than the one held (a replayed one) is not taken.
        old = fetched.ca.gencrl(
            tmp_path / "old.crl", last_update=dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        )
        fetched.point.bodies["ca.crl"] = old.read_bytes()
        caplog.clear()
        with caplog.at_level(logging.WARNING, "certbound.tls"):
            assert not await good.refresh(3)
        assert "older than the CRL held" in caplog.text and good.held[3] is held


def fetch_config(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, bundle: Path
) -> dict[str, object]:
    made = process_config(pki, issuer, upstream, tmp_path)
    made["tls"] |= {"client_ca_file": str(bundle), "fetch_crls": True}  # type: ignore[operator]
    return made


async def test_crl_from_the_distribution_point_refuses_a_revoked_certificate(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, fetched: FetchedCA
) -> None:
    made = fetch_config(pki, issuer, upstream, tmp_path, fetched.bundle)
    with proxy_process(tmp_path, made) as proc:
        assert await orders_status(proc, pki, issuer, fetched.good) == "200"
        assert await orders_status(proc, pki, issuer, fetched.revoked) == "000"
        assert len(upstream.seen) == 1
        text = proc.metrics()
        success = re.search(
            r'^certbound_crl_fetch_last_success_timestamp_seconds\{index="0"\} (\S+)$', text, re.M
        )
        assert success and float(success.group(1)) > 0
        assert 'certbound_crl_fetch_failures_total{index="0"} 0.0' in text
        assert re.search(r'^certbound_crl_next_update_timestamp_seconds\{index="0"\} ', text, re.M)
        output = proc.output()
        assert f"CRL 0 is fetched from {fetched.point.url('ca.crl')}" in output
        assert "reason=revoked" in output and "serial is on the CRL fetched CRL 0" in output


def test_check_config_refuses_fetch_crls_without_a_distribution_point(
    pki: PKI, tmp_path: Path
) -> None:
    cert, key = pki.files("server")
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tls": {
                    "cert_file": cert,
                    "key_file": key,
                    "client_ca_file": pki.ca_file,
                    "fetch_crls": True,
                    "crl_fetch_interval_seconds": 5,
                },
                "tokens": {
                    "issuer": "https://issuer.example",
                    "audience": "api",
                    "jwks_uri": "https://i/jwks",
                },
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "tls.crl_fetch_interval_seconds: must be 60 to 86400, got 5" in done.stderr
    path.write_text(
        path.read_text().replace("crl_fetch_interval_seconds: 5", "crl_fetch_interval_seconds: 60")
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "tls.fetch_crls: no CA in tls.client_ca_file names an http:// CRL distribution" in (
        done.stderr
    )

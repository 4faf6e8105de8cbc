"""tls.ocsp: leaf: `openssl ocsp` as the responder of an `openssl ca` CA (answers signed by a
delegated responder certificate), a `certbound run` process, curl as the client."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import Reason
from tests.support.openssl_ca import Leaf, OpenSSLCA
from tests.support.process import proxy_process
from tests.support.revocation_servers import free_port, ocsp_responder
from tests.support.stack import PKI, Issuer, Upstream, orders_status, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@dataclass
class OCSPCA:
    ca: OpenSSLCA
    good: Leaf
    revoked: Leaf
    signer: Leaf
    bundle: Path
    port: int


@pytest.fixture
def ocsp_ca(pki: PKI, tmp_path: Path) -> OCSPCA:
    port = free_port()
    ca = OpenSSLCA(tmp_path / "ca", "ocsp CA", ocsp_url=f"http://127.0.0.1:{port}")
    good, revoked = ca.issue("good client"), ca.issue("revoked client")
    signer = ca.issue("ocsp responder", extensions="ocsp_ext")
    ca.revoke(revoked)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem + ca.cert.read_bytes())
    return OCSPCA(ca, good, revoked, signer, bundle, port)


def config(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, o: OCSPCA, unavailable: str
) -> dict[str, Any]:
    made = process_config(pki, issuer, upstream, tmp_path)
    made["tls"] |= {
        "client_ca_file": str(o.bundle),
        "ocsp": "leaf",
        "revocation_unavailable": unavailable,
    }
    return made


def counter(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.M)
    assert match, (name, labels)
    return float(match.group(1))


def answers(text: str, status: str) -> float:
    return counter(text, "certbound_ocsp_answers_total", f'status="{status}"')


def rejected(text: str, reason: Reason) -> float:
    # Refused before any token was read: no issuer.
    labels = f'issuer="",outcome="rejected",reason="{reason.value}"'
    return counter(text, "certbound_requests_total", labels)


async def test_revoked_by_ocsp_is_refused_and_good_is_served(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, ocsp_ca: OCSPCA
) -> None:
    made = config(pki, issuer, upstream, tmp_path, ocsp_ca, "refuse")
    with (
        ocsp_responder(ocsp_ca.ca, ocsp_ca.signer, ocsp_ca.port),
        proxy_process(tmp_path, made) as proc,
    ):
        assert await orders_status(proc, pki, issuer, ocsp_ca.revoked) == "401"
        assert upstream.seen == []  # the request never reached the workload
        assert await orders_status(proc, pki, issuer, ocsp_ca.good) == "200", proc.output()[-3000:]
        assert await orders_status(proc, pki, issuer, ocsp_ca.good) == "200"  # from the cache
        assert len(upstream.seen) == 2
        text = proc.metrics()
        assert answers(text, "revoked") == 1
        assert answers(text, "good") == 1  # the second connection was answered by the cache
        assert rejected(text, Reason.CLIENT_CERT_REVOKED) == 1
        output = proc.output()
        assert "OCSP: client certificate revoked" in output
        assert '"reason":"client_cert_revoked","status":401' in output


@pytest.mark.parametrize("unavailable", ["refuse", "allow"])
async def test_responder_down_follows_revocation_unavailable(
    pki: PKI,
    issuer: Issuer,
    upstream: Upstream,
    tmp_path: Path,
    ocsp_ca: OCSPCA,
    unavailable: str,
) -> None:
    made = config(pki, issuer, upstream, tmp_path, ocsp_ca, unavailable)
    with proxy_process(tmp_path, made) as proc:  # nothing listens on the responder's port
        status = await orders_status(proc, pki, issuer, ocsp_ca.good)
        text = proc.metrics()
        assert answers(text, "error") == 1
        if unavailable == "refuse":
            assert status == "401" and upstream.seen == []
            assert rejected(text, Reason.CLIENT_CERT_REVOCATION_UNKNOWN) == 1
            assert "refused (tls.revocation_unavailable is refuse)" in proc.output()
        else:
            assert status == "200" and len(upstream.seen) == 1
            assert "accepted because tls.revocation_unavailable is allow" in proc.output()

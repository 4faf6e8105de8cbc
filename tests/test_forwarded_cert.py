"""client_cert.source: header — the certificate forwarded by a trusted ingress (RFC 9440, XFCC)."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from proxy.settings import ClientCertSettings, ForwardingSettings
from proxy.tools.pki import Issued, issue
from tests.support.stack import PKI, Running, StartProxy, thumbprint

pytestmark = pytest.mark.e2e


def client_cert(cert: Issued) -> str:
    return ":" + base64.b64encode(cert.cert_der).decode() + ":"


def xfcc(cert: Issued) -> str:
    pem = quote(cert.cert_pem.decode(), safe="")
    return f'Hash=abc;Cert="{pem}";Subject="CN=x"'


@pytest.fixture
async def behind_ingress(start_proxy: StartProxy) -> Running:
    return await start_proxy(
        client_cert=ClientCertSettings(source="header", trusted_proxies=("127.0.0.1/32",)),
        forwarding=ForwardingSettings(client_cert_header=True),
    )


async def test_certificate_from_trusted_ingress_header_binds_the_token(
    behind_ingress: Running,
) -> None:
    token = behind_ingress.issuer.mint(behind_ingress.pki.alice)
    # The ingress itself connects without a client certificate here.
    status, _, body = await behind_ingress.request(
        who=None, token=token, headers={"Client-Cert": client_cert(behind_ingress.pki.alice)}
    )
    assert status == 200, body
    seen = behind_ingress.upstream.seen[0].headers
    assert seen["x-certbound-thumbprint"] == [thumbprint(behind_ingress.pki.alice)]
    assert seen["client-cert"] == [client_cert(behind_ingress.pki.alice)]  # re-added, verified


async def test_replay_through_the_ingress_with_another_cert_is_refused(
    behind_ingress: Running,
) -> None:
    token = behind_ingress.issuer.mint(behind_ingress.pki.alice)
    status, _, body = await behind_ingress.request(
        who=None, token=token, headers={"Client-Cert": client_cert(behind_ingress.pki.bob)}
    )
    assert status == 401 and b"thumbprint_mismatch" in body
    assert behind_ingress.upstream.seen == []


@pytest.mark.parametrize("who", ["stranger", "expired", "server_only"])
async def test_forwarded_certificates_that_do_not_verify_are_refused(
    behind_ingress: Running, pki: PKI, who: str
) -> None:
    cert = getattr(pki, who)
    token = behind_ingress.issuer.mint(cert)
    status, headers, body = await behind_ingress.request(
        who=None, token=token, headers={"Client-Cert": client_cert(cert)}
    )
    assert status == 401 and b"invalid_client_cert" in body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert behind_ingress.upstream.seen == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Client-Cert": "not-a-byte-sequence"},
        {"Client-Cert": ":!!!:"},
        {"Client-Cert": ":" + base64.b64encode(b"junk").decode() + ":"},
        [("Client-Cert", ":AA==:"), ("Client-Cert", ":AA==:")],
    ],
)
async def test_malformed_forwarded_headers_are_400(
    behind_ingress: Running, headers: object
) -> None:
    token = behind_ingress.issuer.mint(behind_ingress.pki.alice)
    status, _, _ = await behind_ingress.request(who=None, token=token, headers=headers)
    assert status == 400
    assert behind_ingress.upstream.seen == []


async def test_header_from_an_untrusted_peer_is_ignored(start_proxy: StartProxy) -> None:
    running = await start_proxy(
        client_cert=ClientCertSettings(source="header", trusted_proxies=("10.0.0.0/8",))
    )
    token = running.issuer.mint(running.pki.alice)
    status, _, body = await running.request(
        who=None, token=token, headers={"Client-Cert": client_cert(running.pki.alice)}
    )
    assert status == 401 and b"no_client_cert" in body
    assert running.upstream.seen == []


async def test_trusted_proxy_subjects_require_the_ingress_certificate(
    start_proxy: StartProxy,
) -> None:
    running = await start_proxy(
        client_cert=ClientCertSettings(
            source="header",
            trusted_proxies=("127.0.0.0/8",),
            trusted_proxy_subjects=("CN=bob,O=certbound test",),
        )
    )
    token = running.issuer.mint(running.pki.alice)
    headers = {"Client-Cert": client_cert(running.pki.alice)}
    assert (await running.request(who=None, token=token, headers=headers))[0] == 401
    assert (await running.request(who="alice", token=token, headers=headers))[0] == 401
    assert (await running.request(who="bob", token=token, headers=headers))[0] == 200
    assert len(running.upstream.seen) == 1


async def test_envoy_xfcc_format(start_proxy: StartProxy) -> None:
    running = await start_proxy(
        client_cert=ClientCertSettings(
            source="header", header_format="xfcc", trusted_proxies=("127.0.0.1/32",)
        )
    )
    token = running.issuer.mint(running.pki.alice)
    ok = {"X-Forwarded-Client-Cert": xfcc(running.pki.alice)}
    assert (await running.request(who=None, token=token, headers=ok))[0] == 200
    two = {"X-Forwarded-Client-Cert": xfcc(running.pki.alice) + "," + xfcc(running.pki.bob)}
    assert (await running.request(who=None, token=token, headers=two))[0] == 400
    assert len(running.upstream.seen) == 1
    assert "x-forwarded-client-cert" not in running.upstream.seen[0].headers


async def test_intermediate_chain_in_client_cert_chain(behind_ingress: Running, pki: PKI) -> None:
    from proxy.tools.pki import make_ca

    intermediate = make_ca("issuing CA", issuer=pki.ca)
    leaf = issue(intermediate, "carol")
    token = behind_ingress.issuer.mint(leaf)
    headers = {"Client-Cert": client_cert(leaf), "Client-Cert-Chain": client_cert(intermediate)}
    assert (await behind_ingress.request(who=None, token=token, headers=headers))[0] == 200
    # Without the chain the leaf cannot be verified.
    headers = {"Client-Cert": client_cert(leaf)}
    assert (await behind_ingress.request(who=None, token=token, headers=headers))[0] == 401

"""Client certificates as real PKIs make them: a legacy CA without key identifiers, made with
the openssl command line, through real TLS on loopback with curl as the client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.config import TLSSettings
from proxy.errors import AuthError
from proxy.forwarded import ForwardedCertVerifier
from proxy.identity import thumbprint_of_pem
from tests.conftest import PKI, Issuer, Legacy, Running, StartProxy
from tests.openssl_ca import Leaf, curl_status


async def curl(
    running: Running, leaf: Leaf | None, token: str | None = None
) -> tuple[int, str, str]:
    return await curl_status(running.url + "/orders", running.pki.ca_file, leaf, token=token)


def bound_token(issuer: Issuer, leaf: Leaf) -> str:
    return issuer.mint(cnf={"x5t#S256": thumbprint_of_pem(leaf.cert.read_bytes())})


def server_tls(pki: PKI, client_ca_file: str, **tls: Any) -> TLSSettings:
    cert, key = pki.files("server")
    return TLSSettings(cert_file=cert, key_file=key, client_ca_file=client_ca_file, **tls)


async def legacy_proxy(start_proxy: StartProxy, pki: PKI, legacy: Legacy, **tls: Any) -> Running:
    return await start_proxy(tls=server_tls(pki, str(legacy.bundle), **tls))


def test_legacy_fixture_really_has_no_key_identifiers(legacy: Legacy) -> None:
    ca = x509.load_pem_x509_certificate(legacy.ca.cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(legacy.leaf.cert.read_bytes())
    with pytest.raises(x509.ExtensionNotFound):
        ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


async def test_certificate_without_key_identifiers_is_accepted_by_default(
    start_proxy: StartProxy, pki: PKI, legacy: Legacy
) -> None:
    running = await legacy_proxy(start_proxy, pki, legacy)
    code, status, err = await curl(running, legacy.leaf, bound_token(running.issuer, legacy.leaf))
    assert (code, status) == (0, "200"), err
    expected = thumbprint_of_pem(legacy.leaf.cert.read_bytes())
    assert running.upstream.seen[-1].headers["x-certbound-thumbprint"] == [expected]


async def test_certificate_without_key_identifiers_is_refused_with_x509_strict(
    start_proxy: StartProxy, pki: PKI, legacy: Legacy
) -> None:
    running = await legacy_proxy(start_proxy, pki, legacy, x509_strict=True)
    code, status, _ = await curl(running, legacy.leaf, bound_token(running.issuer, legacy.leaf))
    assert code != 0 and status == "000"
    assert running.upstream.seen == []
    # The standard test PKI has every identifier: still accepted under x509_strict.
    token = running.issuer.mint(running.pki.alice)
    alice = Leaf(*(Path(f) for f in running.pki.files("alice")))
    assert (await curl(running, alice, token))[:2] == (0, "200")


def test_forwarded_certificate_without_key_identifiers_follows_x509_strict(
    legacy: Legacy,
) -> None:
    der = x509.load_pem_x509_certificate(legacy.leaf.cert.read_bytes()).public_bytes(Encoding.DER)
    identity = ForwardedCertVerifier(str(legacy.bundle)).verify(der, [])
    assert identity.subject == "CN=legacy client"
    strict = ForwardedCertVerifier(str(legacy.bundle), x509_strict=True)
    with pytest.raises(AuthError):
        strict.verify(der, [])

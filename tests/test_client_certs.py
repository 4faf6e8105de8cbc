"""Client certificates as real PKIs make them: a legacy CA without key identifiers, made with
the openssl command line, through real TLS on loopback with curl as the client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.config import ConfigError, load_settings
from proxy.errors import AuthError
from proxy.settings import TLSSettings
from proxy.trust.forwarded_cert import ForwardedCertVerifier
from proxy.trust.identity import thumbprint_of_pem
from tests.support.openssl_ca import Leaf, curl_status
from tests.support.stack import PKI, Issuer, Legacy, Running, StartProxy

pytestmark = pytest.mark.e2e


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


async def test_remaining_validity_is_observed_once_per_connection(running: Running) -> None:
    count = "certbound_client_cert_remaining_validity_seconds_count"
    total = "certbound_client_cert_remaining_validity_seconds_sum"
    before, before_sum = await running.metric(count), await running.metric(total)
    alice = Leaf(*(Path(f) for f in running.pki.files("alice")))
    token = running.issuer.mint(running.pki.alice)
    # Two requests on one connection (curl reuses it): one observation.
    args = ["--next", "--cert", str(alice.cert), "--key", str(alice.key)]
    args += ["-H", f"Authorization: Bearer {token}", "-o", "/dev/null", running.url + "/orders"]
    code, _, err = await curl_status(
        running.url + "/orders", running.pki.ca_file, alice, *args, token=token
    )
    assert code == 0, err
    assert await running.metric(count) == before + 1
    remaining = running.pki.alice.cert.not_valid_after_utc.timestamp() - time.time()
    assert abs(await running.metric(total) - before_sum - remaining) < 60


def test_revocation_settings_are_validated_with_their_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "tls: {crl_files: [/nonexistent.crl], revocation_unavailable: maybe, x509_strict: 1}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    problems = "\n".join(raised.value.problems)
    assert "tls.crl_files[0]: file '/nonexistent.crl' does not exist" in problems
    assert "tls.revocation_unavailable: refuse or allow, got 'maybe'" in problems
    assert "tls.x509_strict: expected true or false" in problems

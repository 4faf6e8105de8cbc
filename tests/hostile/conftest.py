"""Fixtures for the hostile-input catalogue: a proxy whose issuer publishes an EC and an RSA
key, a "bait" HTTP server that counts every hit (for jku/x5u/kid URLs that must never be
fetched), and extra client certificates (an intermediate chain, a thumbprint with - and _)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy import server
from proxy.tools.pki import issue, make_ca
from tests.support.hostile import (
    Bait,
    ExtraCerts,
)
from tests.support.stack import (
    PKI,
    Issuer,
    Running,
    Upstream,
    make_settings,
    serve_app,
    thumbprint,
)


@pytest.fixture
async def bait() -> AsyncIterator[Bait]:
    b = Bait(rogue=ec.generate_private_key(ec.SECP256R1()))
    runner, port = await serve_app(b.app())
    b.url = f"http://127.0.0.1:{port}"
    yield b
    await runner.cleanup()


@pytest.fixture(scope="session")
def extra_certs(pki: PKI) -> ExtraCerts:
    while True:
        carol = issue(pki.ca, "carol")
        if {"-", "_"} <= set(thumbprint(carol)):
            break
    carol.write(pki.dir, "h_carol")
    inter = make_ca("test intermediate", issuer=pki.ca)
    dave = issue(inter, "dave")
    dave.write(pki.dir, "h_dave")
    (pki.dir / "h_dave.pem").write_bytes(dave.cert_pem + inter.cert_pem)
    return ExtraCerts(carol=carol, intermediate=inter, dave=dave)


@pytest.fixture
async def hostile(
    pki: PKI, issuer: Issuer, upstream: Upstream, extra_certs: ExtraCerts
) -> AsyncIterator[Running]:
    """The default proxy (algorithms RS256/PS256/ES256/EdDSA); the issuer publishes the EC
    key "k1" and the RSA key "rsa1" (k1 stays the default for `issuer.mint`)."""
    issuer.add_key("rsa1", "rsa")
    issuer.served = ["rsa1", "k1"]
    proxy = await server.start(make_settings(pki, issuer, upstream))
    try:
        await proxy.keys.wait_loaded()
        yield Running(proxy, pki, issuer, upstream)
    finally:
        await server.stop(proxy, grace_seconds=1)


@pytest.fixture
async def hostile_hs(pki: PKI, issuer: Issuer, upstream: Upstream) -> AsyncIterator[Running]:
    """A proxy whose operator listed HS256 next to RS256: the RS256->HS256 confusion setup."""
    issuer.add_key("rsa1", "rsa")
    issuer.served = ["rsa1"]
    settings = make_settings(pki, issuer, upstream, algorithms=("RS256", "HS256"))
    proxy = await server.start(settings)
    try:
        await proxy.keys.wait_loaded()
        yield Running(proxy, pki, issuer, upstream)
    finally:
        await server.stop(proxy, grace_seconds=1)

"""Fixtures for the hostile-input catalogue: a proxy whose issuer publishes an EC and an RSA
key, a "bait" HTTP server that counts every hit (for jku/x5u/kid URLs that must never be
fetched), and extra client certificates (an intermediate chain, a thumbprint with - and _)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy import server
from proxy.tools.pki import Issued, issue, make_ca
from tests.conftest import (
    NO_CREDENTIALS,
    PKI,
    Issuer,
    Running,
    Upstream,
    make_settings,
    serve_app,
    thumbprint,
)


@dataclass
class Bait:
    """A real HTTP server that serves an attacker's JWKS and counts every request."""

    url: str = ""
    hits: list[str] = field(default_factory=list)
    rogue: Any = None  # the attacker's private key (EC)

    def jwk(self, kid: str = "rogue") -> dict[str, Any]:
        value = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.rogue.public_key()))
        value.update(kid=kid, use="sig")
        return value

    def app(self) -> web.Application:
        async def any_path(request: web.Request) -> web.Response:
            self.hits.append(request.raw_path)
            return web.json_response({"keys": [self.jwk()]})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_path)
        return app


@pytest.fixture
async def bait() -> AsyncIterator[Bait]:
    b = Bait(rogue=ec.generate_private_key(ec.SECP256R1()))
    runner, port = await serve_app(b.app())
    b.url = f"http://127.0.0.1:{port}"
    yield b
    await runner.cleanup()


@dataclass(frozen=True)
class ExtraCerts:
    carol: Issued  # thumbprint contains both "-" and "_"
    intermediate: Issued  # an intermediate CA under the test CA
    dave: Issued  # leaf signed by the intermediate; dave.pem holds leaf + intermediate


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


# --- token crafting by hand, for what PyJWT refuses to produce -------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: object) -> str:
    return b64url(json.dumps(obj).encode())


def sign_raw(header: object, payload: str | bytes, key: Any) -> str:
    """A JWS over exactly these header/payload bytes, signed with `key` (EC -> ES256,
    RSA -> RS256, bytes -> HS256), whatever the header claims."""
    body = payload.encode() if isinstance(payload, str) else payload
    signing_input = f"{b64json(header)}.{b64url(body)}".encode()
    if isinstance(key, bytes):
        sig = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
            signing_input, key
        )
    elif isinstance(key, rsa.RSAPrivateKey):
        sig = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(
            signing_input, key
        )
    else:
        sig = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(signing_input, key)
    return f"{signing_input.decode()}.{b64url(sig)}"


def www(headers: dict[str, str]) -> str | None:
    return headers.get("WWW-Authenticate")


def assert_challenge(value: str | None, error: str | None, scheme: str = "Bearer") -> None:
    """error=None: the bare RFC 6750 challenge, with RFC 9449 §7.1's DPoP one beside it (no
    policy: every route takes both); otherwise exactly that error code (in the DPoP scheme for
    refusals about DPoP)."""
    assert value is not None, "no WWW-Authenticate header"
    if error is None:
        assert value == NO_CREDENTIALS
    else:
        assert value.startswith(f'{scheme} error="{error}", error_description="'), value

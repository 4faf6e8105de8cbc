"""policy.routes[].binding: mtls | dpop | any through a running proxy (real TLS, real upstream)."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest

from proxy.config import validate
from proxy.settings import PolicySettings, RouteSettings, Settings
from tests.support.dpop_clients import Client
from tests.support.dpop_proofs import thumbprint
from tests.support.stack import PKI, Issuer, Running, StartProxy, Upstream, make_settings
from tests.support.stack import thumbprint as cert_thumbprint

pytestmark = pytest.mark.e2e

ROUTES = PolicySettings(
    routes=(
        RouteSettings(path="/mtls/**", binding="mtls"),
        RouteSettings(path="/dpop/**", binding="dpop"),
        RouteSettings(path="/any/**"),
    )
)


@pytest.fixture
async def kinds(start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream) -> Running:
    tls = replace(make_settings(pki, issuer, upstream).tls, client_cert="optional")
    return await start_proxy(tls=tls, policy=ROUTES)


async def test_mtls_route_takes_certificate_bound_tokens_only(kinds: Running) -> None:
    token = kinds.issuer.mint(kinds.pki.alice)
    assert (await kinds.request(path="/mtls/a", token=token))[0] == 200
    client = Client(kinds)
    status, headers, body = await client.send(
        [client.proof(htu=client.url("/mtls/a"))], path="/mtls/a"
    )
    assert status == 401
    assert body.startswith(b"401 wrong_binding_kind:")
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert len(kinds.upstream.seen) == 1


async def test_dpop_route_takes_dpop_bound_tokens_only(kinds: Running) -> None:
    client = Client(kinds)
    proof = client.proof(htu=client.url("/dpop/a"))
    assert (await client.send([proof], path="/dpop/a"))[0] == 200
    token = kinds.issuer.mint(kinds.pki.alice)
    connector = aiohttp.TCPConnector(ssl=kinds.client_ssl("alice"), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        # One kept-alive connection: /any/a puts the token in the connection's memo, and the
        # memo must not let it past the route's binding kind afterwards.
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(kinds.url + "/any/a", headers=headers) as resp:
            assert resp.status == 200
        for _ in range(2):
            async with session.get(kinds.url + "/dpop/a", headers=headers) as resp:
                body = await resp.read()
                assert resp.status == 401
                assert body.startswith(b"401 wrong_binding_kind:")
                challenge = resp.headers["WWW-Authenticate"]
                assert challenge.startswith('DPoP error="invalid_token"')
                assert 'algs="' in challenge
    assert [s.path for s in kinds.upstream.seen] == ["/dpop/a", "/any/a"]


async def test_a_token_bound_both_ways_passes_either_route(kinds: Running) -> None:
    client = Client(kinds)
    cnf = {"jkt": thumbprint(client.jwk), "x5t#S256": cert_thumbprint(kinds.pki.alice)}
    token = kinds.issuer.mint(cnf=cnf)
    for path in ("/mtls/a", "/dpop/a", "/any/a"):
        proof = client.proof(htu=client.url(path), token=token)
        status, _, body = await client.send([proof], path=path, token=token, who="alice")
        assert status == 200, body


async def test_any_route_takes_both_kinds(kinds: Running) -> None:
    assert (await kinds.request(path="/any/a", token=kinds.issuer.mint(kinds.pki.alice)))[0] == 200
    client = Client(kinds)
    assert (await client.send([client.proof(htu=client.url("/any/a"))], path="/any/a"))[0] == 200


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        (RouteSettings(path="/a", binding="tls"), "policy.routes[0].binding: mtls, dpop or any"),
        (RouteSettings(path="/a", binding="dpop", public=True), "policy.routes[0].binding: dpop"),
        (
            RouteSettings(path="/a", binding="mtls", allow_unbound_tokens=True),
            "policy.routes[0].binding: mtls",
        ),
    ],
)
def test_route_binding_is_validated(route: RouteSettings, problem: str) -> None:
    problems = validate(replace(Settings(), policy=PolicySettings(routes=(route,))))
    assert any(p.startswith(problem) for p in problems), problems

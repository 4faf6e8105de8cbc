"""RFC 9449 §7.1 challenges through a running proxy (real TLS, real upstream): a route that
takes DPoP says so with `DPoP algs="..."` on every refusal, beside `Bearer` where it takes both;
an mTLS-only route offers Bearer alone. `certbound explain` prints the same header."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from proxy.settings import DPoPSettings, PolicySettings, RouteSettings
from proxy.tools.explain import Request, explain
from tests.support.stack import PKI, Issuer, Running, StartProxy, Upstream, make_settings

pytestmark = pytest.mark.e2e

ALGS = 'algs="ES256 EdDSA"'
ROUTES = PolicySettings(
    routes=(
        RouteSettings(path="/mtls/**", binding="mtls"),
        RouteSettings(path="/dpop/**", binding="dpop"),
        RouteSettings(path="/any/**"),
        RouteSettings(path="/open/**", public=True),
    ),
    unmatched="allow",
)


@pytest.fixture
async def kinds(start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream) -> Running:
    tls = replace(make_settings(pki, issuer, upstream).tls, client_cert="optional")
    dpop = DPoPSettings(algorithms=("ES256", "EdDSA"))
    return await start_proxy(tls=tls, policy=ROUTES, dpop=dpop)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dpop/a", f"DPoP {ALGS}"),
        ("/any/a", f"Bearer, DPoP {ALGS}"),
        ("/elsewhere", f"Bearer, DPoP {ALGS}"),  # policy.unmatched: allow takes any kind
        ("/mtls/a", "Bearer"),
    ],
)
async def test_no_credentials_get_the_challenges_of_the_route_and_are_never_forwarded(
    kinds: Running, path: str, expected: str
) -> None:
    status, headers, body = await kinds.request(path=path, who=None)
    assert (status, body) == (401, b"401 no_token: no access token\n")
    assert headers["WWW-Authenticate"] == expected
    assert kinds.upstream.seen == []


async def test_a_bad_bearer_token_on_an_any_route_is_offered_dpop_too(kinds: Running) -> None:
    expired = kinds.issuer.mint(kinds.pki.alice, exp=int(time.time()) - 3600)
    status, headers, body = await kinds.request(path="/any/a", token=expired)
    assert status == 401 and body.startswith(b"401 expired:")
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert challenge.endswith(f", DPoP {ALGS}")
    assert kinds.upstream.seen == []


async def test_a_bad_bearer_token_on_a_dpop_route_is_answered_in_the_dpop_scheme(
    kinds: Running,
) -> None:
    expired = kinds.issuer.mint(kinds.pki.alice, exp=int(time.time()) - 3600)
    status, headers, _ = await kinds.request(path="/dpop/a", token=expired)
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('DPoP error="invalid_token", error_description="')
    assert challenge.endswith(ALGS)
    assert kinds.upstream.seen == []


async def test_a_bad_token_on_an_mtls_route_offers_no_dpop(kinds: Running) -> None:
    expired = kinds.issuer.mint(kinds.pki.alice, exp=int(time.time()) - 3600)
    status, headers, _ = await kinds.request(path="/mtls/a", token=expired)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert "DPoP" not in headers["WWW-Authenticate"]
    assert kinds.upstream.seen == []


@pytest.mark.parametrize("path", ["/dpop/a", "/any/a", "/mtls/a"])
async def test_explain_prints_the_challenge_the_proxy_sends(kinds: Running, path: str) -> None:
    _, headers, _ = await kinds.request(path=path, who=None)
    lines: list[str] = []
    settings = kinds.proxy.settings
    assert await explain(settings, Request(target=path), lines.append) == 0
    assert f"WWW-Authenticate: {headers['WWW-Authenticate']}" in lines[-1]


async def test_explain_prints_the_challenge_of_a_refused_token(kinds: Running) -> None:
    expired = kinds.issuer.mint(kinds.pki.alice, exp=int(time.time()) - 3600)
    _, headers, _ = await kinds.request(path="/any/a", token=expired)
    lines: list[str] = []
    request = Request(token=expired, target="/any/a")
    assert await explain(kinds.proxy.settings, request, lines.append) == 1
    assert f"     WWW-Authenticate: {headers['WWW-Authenticate']}" in lines


async def test_explain_says_a_public_route_needs_no_token(kinds: Running) -> None:
    lines: list[str] = []
    assert await explain(kinds.proxy.settings, Request(target="/open/x"), lines.append) == 0
    assert lines[-1] == "   without a token: forwarded (public route)"

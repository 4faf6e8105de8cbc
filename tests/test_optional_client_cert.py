"""tls.client_cert: optional through a running proxy: real TLS without a client certificate."""

from __future__ import annotations

import ssl
from dataclasses import replace

import aiohttp
import pytest

from proxy.settings import PolicySettings, RouteSettings
from tests.support.stack import PKI, Issuer, Running, StartProxy, Upstream, make_settings

pytestmark = pytest.mark.e2e


@pytest.fixture
async def optional(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream
) -> Running:
    tls = replace(make_settings(pki, issuer, upstream).tls, client_cert="optional")
    routes = PolicySettings(
        unmatched="allow",
        routes=(
            RouteSettings(path="/health", public=True),
            RouteSettings(path="/mesh/**", public=True, subjects=("spiffe://test/alice",)),
            RouteSettings(path="/legacy/**", allow_unbound_tokens=True),
        ),
    )
    return await start_proxy(tls=tls, policy=routes)


async def test_without_certificate_under_required_the_handshake_fails(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await running.request(who=None, token=token)
    assert running.upstream.seen == []


async def test_without_certificate_a_public_route_is_forwarded(optional: Running) -> None:
    status, _, body = await optional.request("GET", "/health", who=None)
    assert status == 200, body
    [seen] = optional.upstream.seen
    assert "x-certbound-thumbprint" not in seen.headers
    assert seen.headers["x-certbound-binding"] == ["none"]


async def test_without_certificate_a_route_naming_subjects_is_refused(optional: Running) -> None:
    status, _, body = await optional.request("GET", "/mesh/x", who=None)
    assert status == 401
    assert b"no_client_cert" in body
    assert optional.upstream.seen == []


async def test_mtls_bound_token_without_certificate_is_refused(optional: Running) -> None:
    token = optional.issuer.mint(optional.pki.alice)
    status, headers, body = await optional.request(who=None, token=token)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert b"no_client_cert" in body
    assert optional.upstream.seen == []
    sample = 'certbound_requests_total{issuer="0",outcome="rejected",reason="no_client_cert"}'
    assert await optional.metric(sample) >= 1


async def test_unbound_token_without_certificate_is_refused_even_where_allowed(
    optional: Running,
) -> None:
    token = optional.issuer.mint()
    status, _, body = await optional.request("GET", "/legacy/x", who=None, token=token)
    assert status == 401
    assert b"no_client_cert" in body
    assert optional.upstream.seen == []


async def test_with_certificate_under_optional_bound_tokens_still_work(optional: Running) -> None:
    token = optional.issuer.mint(optional.pki.alice)
    status, _, body = await optional.request(token=token)
    assert status == 200, body
    status, _, body = await optional.request(who="bob", token=token)
    assert status == 401
    assert b"thumbprint_mismatch" in body
    assert len(optional.upstream.seen) == 1

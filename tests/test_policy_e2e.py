"""Route policy and report-only rollout through a running proxy."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from proxy.settings import BindingSettings, PolicySettings, RouteSettings
from tests.support.stack import Running, StartProxy

pytestmark = pytest.mark.e2e


def policy(*routes: RouteSettings, unmatched: str = "deny") -> PolicySettings:
    return PolicySettings(unmatched=unmatched, routes=routes)


ROUTES = policy(
    RouteSettings(path="/health", public=True),
    RouteSettings(path="/orders/*", methods=("GET", "HEAD"), scopes=("orders:read",)),
    RouteSettings(path="/orders/*", methods=("POST",), scopes=("orders:write",)),
    RouteSettings(path="/admin/**", clients=("ops-console",), scopes=("admin",)),
    RouteSettings(path="/mesh/**", subjects=("spiffe://test/alice",)),
    RouteSettings(path="/legacy/**", allow_unbound_tokens=True),
)


@pytest.fixture
async def guarded(start_proxy: StartProxy) -> Running:
    return await start_proxy(policy=ROUTES)


async def test_route_with_its_scope_is_forwarded(guarded: Running) -> None:
    token = guarded.issuer.mint(guarded.pki.alice, scope="orders:read")
    status, _, body = await guarded.request(path="/orders/7?view=full", token=token)
    assert status == 200, body
    assert guarded.upstream.seen[0].path == "/orders/7?view=full"


async def test_missing_scope_is_403_insufficient_scope_with_scope_attribute(
    guarded: Running,
) -> None:
    token = guarded.issuer.mint(guarded.pki.alice, scope="orders:read")
    status, headers, body = await guarded.request("POST", path="/orders/7", token=token)
    assert status == 403
    assert headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
    assert 'scope="orders:write"' in headers["WWW-Authenticate"]
    assert b"insufficient_scope" in body
    assert guarded.upstream.seen == []


async def test_client_not_on_the_list_is_403(guarded: Running) -> None:
    token = guarded.issuer.mint(guarded.pki.alice, scope="admin", client_id="orders-app")
    status, headers, body = await guarded.request(path="/admin/users", token=token)
    assert status == 403 and b"client_not_allowed" in body
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    ok = guarded.issuer.mint(guarded.pki.alice, scope="admin", client_id="ops-console")
    assert (await guarded.request(path="/admin/users", token=ok))[0] == 200
    assert len(guarded.upstream.seen) == 1


async def test_certificate_subject_rules_use_the_spiffe_uri_san(guarded: Running) -> None:
    alice = guarded.issuer.mint(guarded.pki.alice)
    bob = guarded.issuer.mint(guarded.pki.bob)
    assert (await guarded.request(path="/mesh/x", token=alice))[0] == 200
    status, _, body = await guarded.request(path="/mesh/x", who="bob", token=bob)
    assert status == 403 and b"subject_not_allowed" in body
    assert len(guarded.upstream.seen) == 1


async def test_unmatched_requests_are_denied_by_default(guarded: Running) -> None:
    token = guarded.issuer.mint(guarded.pki.alice, scope="orders:read admin")
    for method, path in (("DELETE", "/orders/7"), ("GET", "/orders"), ("GET", "/other")):
        status, _, body = await guarded.request(method, path=path, token=token)
        assert status == 403 and b"no_matching_route" in body, path
    assert guarded.upstream.seen == []


async def test_unmatched_allow_forwards_after_token_and_binding(start_proxy: StartProxy) -> None:
    running = await start_proxy(
        policy=policy(RouteSettings(path="/x", scopes=("s",)), unmatched="allow")
    )
    token = running.issuer.mint(running.pki.alice)
    assert (await running.request(path="/free", token=token))[0] == 200
    assert (await running.request(path="/free", who="bob", token=token))[0] == 401


async def test_public_route_needs_mtls_but_no_token(guarded: Running) -> None:
    status, _, _ = await guarded.request(path="/health", token=None)
    assert status == 200
    seen = guarded.upstream.seen[0].headers
    assert seen["x-certbound-binding"] == ["none"]
    assert "x-certbound-subject" not in seen
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, OSError)):
        await guarded.request(path="/health", who=None)
    assert len(guarded.upstream.seen) == 1


async def test_allow_unbound_tokens_only_on_its_route(guarded: Running) -> None:
    unbound = guarded.issuer.mint(None)
    status, _, _ = await guarded.request(path="/legacy/report", token=unbound)
    assert status == 200
    assert guarded.upstream.seen[0].headers["x-certbound-binding"] == ["unbound"]
    status, _, body = await guarded.request(path="/mesh/x", token=unbound)
    assert status == 401 and b"missing_cnf" in body
    # A token bound to someone else is still refused on the unbound-friendly route.
    stolen = guarded.issuer.mint(guarded.pki.bob)
    assert (await guarded.request(path="/legacy/report", token=stolen))[0] == 401
    assert len(guarded.upstream.seen) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/orders/7/../../admin/users",
        "/orders/%2e%2e/admin/users",
        "/orders/7%2F..%2F..%2Fadmin",
        "//admin/users",
        "/admin;x=1/users",
        "/orders/7;/../admin",
        "/orders\\..\\admin",
        "/orders/%252e%252e/admin",
        "/orders/./7",
        "/orders/%2E%2E/%2E%2E/admin/users",
    ],
)
async def test_path_tricks_are_400_and_never_reach_the_upstream(
    guarded: Running, path: str
) -> None:
    token = guarded.issuer.mint(guarded.pki.alice, scope="orders:read")
    status, headers, body = await guarded.request(path=path, token=token)
    assert status == 400, body
    assert 'error="invalid_request"' in headers["WWW-Authenticate"]
    assert guarded.upstream.seen == []


async def test_forwarded_path_is_exactly_the_matched_normalised_path(guarded: Running) -> None:
    token = guarded.issuer.mint(guarded.pki.alice, scope="orders:read")
    status, _, _ = await guarded.request(path="/%6Frders/%37?q=%2e", token=token)
    assert status == 200
    assert guarded.upstream.seen[0].path == "/orders/7?q=%2e"
    # Case-variant of a guarded prefix is a different path: not matched, so denied.
    status, _, _ = await guarded.request(path="/ADMIN/users", token=token)
    assert status == 403


async def test_report_only_forwards_a_mismatch_but_counts_and_flags_it(
    start_proxy: StartProxy,
) -> None:
    running = await start_proxy(binding=BindingSettings(mode="report_only"))
    assert await running.metric("certbound_report_only") == 1
    sample = (
        'certbound_requests_total{issuer="0",outcome="report_only",reason="thumbprint_mismatch"}'
    )
    before = await running.metric(sample)
    token = running.issuer.mint(running.pki.alice)
    status, _, _ = await running.request(who="bob", token=token)
    assert status == 200
    assert running.upstream.seen[0].headers["x-certbound-binding"] == ["report_only_failed"]
    assert await running.metric(sample) == before + 1
    # Report-only covers binding only: an invalid token is still refused.
    bad = running.issuer.mint(running.pki.alice, aud="someone-else")
    assert (await running.request(token=bad))[0] == 401
    assert len(running.upstream.seen) == 1


async def test_report_only_start_is_logged_loudly(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    await start_proxy(binding=BindingSettings(mode="report_only"))
    assert any(
        "REPORT-ONLY MODE" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records
    )


async def test_per_route_report_only_leaves_other_routes_enforced(start_proxy: StartProxy) -> None:
    running = await start_proxy(
        policy=policy(
            RouteSettings(path="/new/**", binding_mode="report_only"), RouteSettings(path="/old/**")
        )
    )
    token = running.issuer.mint(running.pki.alice)
    assert (await running.request(path="/new/x", who="bob", token=token))[0] == 200
    assert (await running.request(path="/old/x", who="bob", token=token))[0] == 401
    assert await running.metric("certbound_report_only") == 1
    await asyncio.sleep(0)

"""Opaque tokens through a real RFC 7662 introspection endpoint that the tests run."""

from __future__ import annotations

import base64
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.settings import ForwardingSettings, IntrospectionSettings, TokenSettings
from proxy.tools.pki import issue
from tests.support.stack import AUDIENCE, PKI, Running, StartProxy, serve_app, thumbprint

pytestmark = pytest.mark.e2e

CLIENT_ID, SECRET = "certbound-rs", "s3cr:et/ü"


@dataclass
class Introspection:
    """An authorization server's introspection endpoint: token -> answer, hits counted."""

    url: str = ""
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    hits: int = 0
    down: bool = False
    require_cert: bool = False

    def opaque(self, pki: PKI, cert: Any = "alice", **claims: Any) -> str:
        token = secrets.token_urlsafe(24)  # no dots: not a JWT
        answer: dict[str, Any] = {
            "active": True,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "orders-app",
            "scope": "orders:read",
            "exp": int(time.time()) + 600,
        }
        if cert:
            answer["cnf"] = {"x5t#S256": thumbprint(getattr(pki, cert))}
        answer.update(claims)
        self.answers[token] = {k: v for k, v in answer.items() if v is not None}
        return token

    def app(self) -> web.Application:
        async def introspect(request: web.Request) -> web.Response:
            self.hits += 1
            if self.down:
                return web.Response(status=500)
            form = await request.post()
            if self.require_cert:
                if request.transport is None or not request.transport.get_extra_info("peercert"):
                    return web.Response(status=401)
                if form.get("client_id") != CLIENT_ID:
                    return web.Response(status=401)
            else:
                pair = f"{CLIENT_ID.replace(':', '%3A')}:{'s3cr%3Aet%2F%C3%BC'}"
                if (
                    request.headers.get("Authorization")
                    != "Basic " + base64.b64encode(pair.encode()).decode()
                ):
                    return web.Response(status=401)
            return web.json_response(self.answers.get(str(form.get("token")), {"active": False}))

        app = web.Application()
        app.router.add_post("/introspect", introspect)
        return app


@pytest.fixture
async def endpoint() -> AsyncIterator[Introspection]:
    server = Introspection()
    runner, port = await serve_app(server.app())
    server.url = f"http://127.0.0.1:{port}/introspect"
    yield server
    await runner.cleanup()


def tokens_with(running_tokens: TokenSettings, **introspection: Any) -> TokenSettings:
    return replace(
        running_tokens, introspection=IntrospectionSettings(enabled=True, **introspection)
    )


@pytest.fixture
async def opaque(start_proxy: StartProxy, endpoint: Introspection, tmp_path: Path) -> Running:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    probe = await start_proxy()
    settings = tokens_with(
        probe.proxy.settings.tokens,
        endpoint=endpoint.url,
        client_id=CLIENT_ID,
        client_secret_file=str(secret_file),
        negative_cache_ttl_seconds=60,
    )
    return await start_proxy(tokens=settings)


async def test_active_bound_opaque_token_is_forwarded_and_cached(
    opaque: Running, endpoint: Introspection
) -> None:
    token = endpoint.opaque(opaque.pki)
    for _ in range(3):
        status, _, body = await opaque.request(token=token)
        assert status == 200, body
    assert endpoint.hits == 1
    assert opaque.upstream.seen[0].headers["x-certbound-subject"] == ["alice"]


async def test_opaque_token_bound_to_another_cert_is_invalid_token(
    opaque: Running, endpoint: Introspection
) -> None:
    token = endpoint.opaque(opaque.pki, cert="bob")
    status, headers, body = await opaque.request(token=token)
    assert status == 401 and b"thumbprint_mismatch" in body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert opaque.upstream.seen == []


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"active": False}, "inactive_token"),
        ({"active": "true"}, "inactive_token"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "https://other.example"}, "wrong_audience"),
        ({"aud": None}, "wrong_audience"),
        ({"iss": "https://evil.example"}, "wrong_issuer"),
        ({"cnf": None}, "missing_cnf"),
    ],
)
async def test_bad_introspection_answers_are_refused(
    opaque: Running, endpoint: Introspection, claims: dict[str, Any], reason: str
) -> None:
    token = endpoint.opaque(opaque.pki, **claims)
    status, _, body = await opaque.request(token=token)
    assert status == 401 and reason.encode() in body, body
    assert opaque.upstream.seen == []


async def test_unknown_token_is_inactive_and_cached_briefly(
    opaque: Running, endpoint: Introspection
) -> None:
    for _ in range(3):
        status, _, body = await opaque.request(token="not-a-known-token")
        assert status == 401 and b"inactive_token" in body
    assert endpoint.hits == 1


async def test_endpoint_down_is_503_never_an_accept(
    opaque: Running, endpoint: Introspection
) -> None:
    token = endpoint.opaque(opaque.pki)
    endpoint.down = True
    status, headers, body = await opaque.request(token=token)
    assert status == 503 and b"introspection_unavailable" in body
    assert "WWW-Authenticate" not in headers
    endpoint.down = False
    assert (await opaque.request(token=token))[0] == 200
    assert len(opaque.upstream.seen) == 1


async def test_jwts_are_still_verified_locally(opaque: Running, endpoint: Introspection) -> None:
    token = opaque.issuer.mint(opaque.pki.alice)
    assert (await opaque.request(token=token))[0] == 200
    assert endpoint.hits == 0


async def test_mtls_client_authentication_to_the_endpoint(
    start_proxy: StartProxy, pki: PKI, tmp_path: Path
) -> None:
    endpoint = Introspection(require_cert=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca_file)
    server_ctx.load_cert_chain(*pki.files("server"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(endpoint.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rs = issue(pki.ca, "certbound-rs")  # the proxy's own client certificate
    rs_cert, rs_key = rs.write(tmp_path, "rs")
    try:
        probe = await start_proxy()
        settings = tokens_with(
            probe.proxy.settings.tokens,
            endpoint=f"https://localhost:{port}/introspect",
            client_id=CLIENT_ID,
            client_cert_file=str(rs_cert),
            client_key_file=str(rs_key),
            ca_file=pki.ca_file,
        )
        running = await start_proxy(tokens=settings)
        token = endpoint.opaque(pki)
        status, _, body = await running.request(token=token)
        assert status == 200, body
        assert endpoint.hits == 1
    finally:
        await runner.cleanup()


async def test_endpoint_is_discovered_from_the_issuer_metadata(
    start_proxy: StartProxy, endpoint: Introspection, tmp_path: Path
) -> None:
    # The authorization server publishes RFC 8414 metadata naming its introspection endpoint.
    metadata = web.Application()

    async def oauth_metadata(request: web.Request) -> web.Response:
        issuer = str(request.url.origin())  # metadata names the issuer it was fetched from
        return web.json_response({"issuer": issuer, "introspection_endpoint": endpoint.url})

    metadata.router.add_get("/.well-known/oauth-authorization-server", oauth_metadata)
    runner, port = await serve_app(metadata)
    try:
        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET)
        probe = await start_proxy()
        issuer = f"http://127.0.0.1:{port}"
        settings = tokens_with(
            replace(probe.proxy.settings.tokens, issuer=issuer),
            client_id=CLIENT_ID,
            client_secret_file=str(secret_file),
        )
        running = await start_proxy(tokens=settings)
        token = endpoint.opaque(running.pki, iss=issuer)
        status, _, body = await running.request(token=token)
        assert status == 200, body
        assert endpoint.hits == 1
    finally:
        await runner.cleanup()


async def test_introspected_tokens_get_lifetime_rule_claim_headers_and_the_issuer_name(
    start_proxy: StartProxy, endpoint: Introspection, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    probe = await start_proxy()
    tokens = replace(
        tokens_with(
            probe.proxy.settings.tokens,
            endpoint=endpoint.url,
            client_id=CLIENT_ID,
            client_secret_file=str(secret_file),
        ),
        max_lifetime_seconds=300,
    )
    running = await start_proxy(
        tokens=tokens,
        forwarding=ForwardingSettings(claim_headers=(("X-User-Email", "email"),)),
    )
    now = int(time.time())
    long_lived = endpoint.opaque(running.pki, iat=now, exp=now + 600)
    no_exp = endpoint.opaque(running.pki, exp=None)
    for token in (long_lived, no_exp):
        status, _, body = await running.request(token=token)
        assert status == 401 and body.startswith(b"401 lifetime_too_long:"), body
    assert running.upstream.seen == []
    fine = endpoint.opaque(running.pki, iat=now, exp=now + 120, email="a@b.example\r\nX: y")
    status, _, body = await running.request(token=fine, headers={"X-User-Email": "forged"})
    assert status == 200, body
    assert running.upstream.seen[0].headers["x-user-email"] == ["a@b.example%0D%0AX: y"]
    forwarded = 'certbound_requests_total{issuer="0",outcome="forwarded",reason="ok"}'
    assert await running.metric(forwarded) >= 1

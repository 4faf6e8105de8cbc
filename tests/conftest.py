"""Real parts for every test: a PKI made per session, a JWKS issuer, a recording upstream and
the proxy itself, all on loopback. Nothing here mocks a socket."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy import server
from proxy.tools.pki import issue, make_ca
from tests.support.openssl_ca import OpenSSLCA
from tests.support.redis_server import RedisServer
from tests.support.secrecy import leaks
from tests.support.stack import (
    LOG,
    MINTED,
    PKI,
    Issuer,
    Legacy,
    Running,
    StartProxy,
    Upstream,
    make_settings,
    serve_app,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca("test CA")
    other = make_ca("other CA")
    now = dt.datetime.now(dt.UTC)
    made = PKI(
        dir=d,
        ca=ca,
        other_ca=other,
        server=issue(
            ca,
            "localhost",
            server=True,
            client=False,
            dns_names=("localhost",),
            ip_addresses=("127.0.0.1",),
        ),
        alice=issue(ca, "alice", uris=("spiffe://test/alice",)),
        bob=issue(ca, "bob", uris=("spiffe://test/bob",)),
        expired=issue(
            ca, "old", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ),
        server_only=issue(ca, "svc", server=True, client=False),
        stranger=issue(other, "alice"),
    )
    (d / "ca.pem").write_bytes(ca.cert_pem)
    for name in ("server", "alice", "bob", "expired", "server_only", "stranger"):
        getattr(made, name).write(d, name)
    return made


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = Issuer()
    iss.add_key("k1")
    runner, port = await serve_app(iss.app())
    iss.url = f"http://127.0.0.1:{port}"
    yield iss
    await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    runner, port = await serve_app(up.app())
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await runner.cleanup()


@pytest.fixture
async def running(pki: PKI, issuer: Issuer, upstream: Upstream) -> AsyncIterator[Running]:
    proxy = await server.start(make_settings(pki, issuer, upstream))
    await asyncio.wait_for(proxy.keys.wait_loaded(), 5)
    yield Running(proxy, pki, issuer, upstream)
    await server.stop(proxy, grace_seconds=1)


@pytest.fixture
async def start_proxy(pki: PKI, issuer: Issuer, upstream: Upstream) -> AsyncIterator[StartProxy]:
    """Start a proxy with some settings sections replaced: start_proxy(policy=PolicySettings())."""
    started: list[server.Proxy] = []

    async def start(**sections: Any) -> Running:
        settings = replace(make_settings(pki, issuer, upstream), **sections)
        proxy = await server.start(settings)
        started.append(proxy)
        if settings.tokens.accept_jwt:
            await asyncio.wait_for(proxy.keys.wait_loaded(), 5)
        return Running(proxy, pki, issuer, upstream)

    yield start
    for proxy in started:
        await server.stop(proxy, grace_seconds=1)


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_the_run_log() -> Iterator[None]:
    """After the last test: no line logged in this run may hold a token the tests minted."""
    yield

    assert leaks("\n".join(LOG.lines), MINTED) == [], "a token reached the log"


@pytest.fixture(scope="session")
def repo_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def legacy(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Legacy:
    d = tmp_path_factory.mktemp("legacy")
    ca = OpenSSLCA(d / "ca", "legacy CA", key_identifiers=False)
    bundle = d / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem + ca.cert.read_bytes())
    return Legacy(ca, ca.issue("legacy client"), bundle)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server, with a password, on a free loopback port for this test."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()

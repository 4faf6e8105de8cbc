"""DPoP (RFC 9449) with parts certbound did not write: a real authorization server (panva's
oidc-provider, Node) issuing DPoP-bound JWT access tokens by the client_credentials grant, and a
real DPoP client (panva's oauth4webapi) that proves its key to that server, then calls a real
`certbound run` process, whose keys come from the server's discovery document. A recording
upstream must see what passes and never what is refused. The same server also issues an
mTLS certificate-bound token (RFC 8705) to a client that asks over HTTPS with its certificate.

The Node side is tests/oidc (package.json, package-lock.json, server.mjs, client.mjs);
scripts/test.sh installs it with `npm ci --prefix tests/oidc`. A missing `node` or missing
packages fail these tests; they are never skipped."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import select
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.process import ProxyProcess, proxy_process, stop_group
from tests.support.secrecy import leaks
from tests.support.stack import AUDIENCE, MINTED, PKI, Upstream, serve_app, thumbprint

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "orders-app"
SCOPE = "orders:read"


@dataclass(frozen=True)
class Node:
    binary: str
    env: dict[str, str]  # what server.mjs and client.mjs both read


@pytest.fixture(scope="module")
def node() -> Node:
    binary = shutil.which("node")
    assert binary, "node is not installed: scripts/test.sh installs it (apt-get install nodejs npm)"
    for package in ("oidc-provider", "oauth4webapi"):
        assert (NODE_DIR / "node_modules" / package / "package.json").is_file(), (
            f"{package} is not installed: run `npm ci --prefix tests/oidc` (scripts/test.sh does)"
        )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NODE_", "CERTBOUND_"))},
        "AUDIENCE": AUDIENCE,
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": secrets.token_urlsafe(24),
        "SCOPE": SCOPE,
    }
    return Node(binary, env)


@dataclass(frozen=True)
class AuthorizationServer:
    issuer: str
    mtls: str  # the same server over HTTPS, asking for a client certificate
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def authorization_server(
    node: Node, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthorizationServer]:
    """oidc-provider on a free loopback port. Its token endpoint demands a DPoP nonce of its
    own (REQUIRE_NONCE), so every client run goes through the use_dpop_nonce retry. Its HTTPS
    port serves the tests' server certificate and accepts the tests' client certificates."""
    log_path = tmp_path_factory.mktemp("oidc") / "server.log"
    cert, key = pki.files("server")
    tls = {"TLS_CERT": cert, "TLS_KEY": key, "TLS_CLIENT_CA": pki.ca_file}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [node.binary, str(NODE_DIR / "server.mjs")],
            stdout=subprocess.PIPE,
            stderr=log,
            env={**node.env, "REQUIRE_NONCE": "1", **tls},
            start_new_session=True,
        )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 20
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"server.mjs exited ({proc.wait()}):\n{log_path.read_text()}"
                line += chunk
            assert time.monotonic() < deadline, f"server.mjs not ready:\n{log_path.read_text()}"
        ready = json.loads(line)
        assert ready["issuer"].startswith("http://127.0.0.1:"), ready
        assert ready["mtls"].startswith("https://127.0.0.1:"), ready
        yield AuthorizationServer(ready["issuer"], ready["mtls"], log_path)
    finally:
        stop_group(proc)
        proc.stdout.close()


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[Upstream]:
    """conftest's recording upstream, served on a thread of its own for the whole module (the
    test functions here are synchronous; their event loops would not outlive one test)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    up = Upstream()
    runner: web.AppRunner
    runner, port = asyncio.run_coroutine_threadsafe(serve_app(up.app()), loop).result(10)
    up.url = f"http://127.0.0.1:{port}"
    try:
        yield up
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def certbound_config(
    pki: PKI, authorization_server: AuthorizationServer, module_upstream: Upstream
) -> dict[str, Any]:
    """A `certbound run` process trusting the authorization server: its issuer URL, the
    resource indicator as audience, keys found through its discovery document."""
    cert, key = pki.files("server")
    return {
        "tls": {
            "cert_file": cert,
            "key_file": key,
            "client_ca_file": pki.ca_file,
            "client_cert": "optional",  # a DPoP client has no certificate
        },
        "upstream": {"url": module_upstream.url},
        "tokens": {"issuer": authorization_server.issuer, "audience": AUDIENCE},
        "policy": {
            "routes": [
                {"path": "/orders/**", "scopes": [SCOPE], "binding": "dpop"},
                {"path": "/mtls/**", "scopes": [SCOPE], "binding": "mtls"},
            ]
        },
    }


@pytest.fixture(scope="module")
def certbound(
    pki: PKI,
    authorization_server: AuthorizationServer,
    module_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    config = certbound_config(pki, authorization_server, module_upstream)
    with proxy_process(tmp_path_factory.mktemp("certbound"), config) as proc:
        yield proc


@pytest.fixture(scope="module")
def certbound_with_nonces(
    pki: PKI,
    authorization_server: AuthorizationServer,
    module_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    """The same, asking for server nonces (dpop.nonce, RFC 9449 §9)."""
    config = {
        **certbound_config(pki, authorization_server, module_upstream),
        "dpop": {"nonce": True},
    }
    with proxy_process(tmp_path_factory.mktemp("certbound-nonce"), config) as proc:
        yield proc


@pytest.fixture
def upstream_seen(module_upstream: Upstream) -> Upstream:
    module_upstream.seen.clear()
    return module_upstream


@dataclass(frozen=True)
class ClientRun:
    claims: dict[str, Any]
    jkt: str
    token_nonce_retries: int
    sent_scheme: str
    requests: list[dict[str, Any]]
    stderr: str


def run_client(
    node: Node, pki: PKI, issuer: str, proc: ProxyProcess, mode: str, requests: int = 1
) -> ClientRun:
    url = f"https://127.0.0.1:{proc.port}/orders/7"
    done = subprocess.run(
        [node.binary, str(NODE_DIR / "client.mjs"), issuer, url, mode, str(requests)],
        env={**node.env, "NODE_EXTRA_CA_CERTS": pki.ca_file},  # certbound's certificate's CA
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"client.mjs {mode} failed:\n{stderr}"
    return ClientRun(**json.loads(done.stdout), stderr=stderr)


def sample(proc: ProxyProcess, name: str) -> float:
    for line in proc.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def requests_total(outcome: str, reason: str) -> str:
    return f'certbound_requests_total{{issuer="0",outcome="{outcome}",reason="{reason}"}}'


@pytest.mark.slow
def test_the_real_clients_dpop_requests_pass_with_the_servers_token(
    node: Node,
    pki: PKI,
    authorization_server: AuthorizationServer,
    certbound: ProxyProcess,
    upstream_seen: Upstream,
) -> None:
    before = sample(certbound, requests_total("forwarded", "ok"))
    run = run_client(node, pki, authorization_server.issuer, certbound, "dpop", requests=2)
    # The server's token: for our audience, bound to the client's key, with the scope asked for.
    assert run.claims["iss"] == authorization_server.issuer
    assert run.claims["aud"] == AUDIENCE
    assert run.claims["client_id"] == CLIENT_ID
    assert run.claims["scope"] == SCOPE
    assert run.claims["cnf"] == {"jkt": run.jkt}
    # The token endpoint asked for its nonce once, and the client retried with it.
    assert run.token_nonce_retries == 1
    assert run.sent_scheme == "DPoP"
    # Two requests, two proofs: the second token check is a cache hit, its proof is not.
    assert [r["status"] for r in run.requests] == [200, 200], run.requests
    assert [r["nonce_retries"] for r in run.requests] == [0, 0]
    assert json.loads(run.requests[0]["body"])["path"] == "/orders/7"
    assert len(upstream_seen.seen) == 2
    for seen in upstream_seen.seen:
        assert seen.path == "/orders/7"
        assert seen.headers["x-certbound-binding"] == ["bound"]
        assert seen.headers["x-certbound-client-id"] == [CLIENT_ID]
        assert seen.headers["x-certbound-scope"] == [SCOPE]
        assert "x-certbound-thumbprint" not in seen.headers  # no certificate was presented
        assert seen.headers["authorization"][0].startswith("DPoP ")
    assert sample(certbound, requests_total("forwarded", "ok")) == before + 2


@pytest.mark.slow
def test_the_real_client_retries_with_certbounds_nonce_and_keeps_it(
    node: Node,
    pki: PKI,
    authorization_server: AuthorizationServer,
    certbound_with_nonces: ProxyProcess,
    upstream_seen: Upstream,
) -> None:
    proc = certbound_with_nonces
    missing = sample(proc, requests_total("rejected", "dpop_nonce_missing"))
    run = run_client(node, pki, authorization_server.issuer, proc, "dpop", requests=2)
    # The first request is answered use_dpop_nonce with a DPoP-Nonce header; the client
    # retries with it, and its second request carries it from the start.
    assert [r["status"] for r in run.requests] == [200, 200], run.requests
    assert [r["nonce_retries"] for r in run.requests] == [1, 0]
    assert len(upstream_seen.seen) == 2  # the refused first try never reached it
    assert sample(proc, requests_total("rejected", "dpop_nonce_missing")) == missing + 1


@pytest.mark.parametrize(
    ("mode", "scheme", "reason", "challenge", "forwarded"),
    [
        # The same proof sent again: the first passes, the second is a replay.
        ("replay", "DPoP", "dpop_replayed", 'DPoP error="invalid_dpop_proof"', 1),
        # The DPoP-bound token sent as Bearer: the downgrade of RFC 9449 §7.2.
        ("bearer", "Bearer", "dpop_token_as_bearer", 'DPoP error="invalid_token"', 0),
        # A genuine proof, but by another key than the token's cnf.jkt.
        ("other-key", "DPoP", "dpop_key_mismatch", 'DPoP error="invalid_token"', 0),
    ],
)
def test_the_real_clients_misuse_is_refused_and_never_forwarded(
    node: Node,
    pki: PKI,
    authorization_server: AuthorizationServer,
    certbound: ProxyProcess,
    upstream_seen: Upstream,
    mode: str,
    scheme: str,
    reason: str,
    challenge: str,
    forwarded: int,
) -> None:
    before = sample(certbound, requests_total("rejected", reason))
    run = run_client(node, pki, authorization_server.issuer, certbound, mode)
    assert run.sent_scheme == scheme
    *passed, refused = run.requests
    assert [r["status"] for r in passed] == [200] * forwarded, passed
    assert refused["status"] == 401, refused
    assert refused["body"].startswith(f"401 {reason}:")
    assert refused["www_authenticate"].startswith(challenge)
    assert len(upstream_seen.seen) == forwarded  # the refused request never reached it
    assert sample(certbound, requests_total("rejected", reason)) == before + 1


def https(url: str, pki: PKI, who: str | None, **request: Any) -> tuple[int, str]:
    """One request with `who`'s certificate (None: without one): status and body."""
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    if who is not None:
        ctx.load_cert_chain(*pki.files(who))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, **request), context=ctx) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_the_servers_certificate_bound_token_passes_only_with_that_certificate(
    node: Node,
    pki: PKI,
    authorization_server: AuthorizationServer,
    certbound: ProxyProcess,
    upstream_seen: Upstream,
) -> None:
    basic = f"{CLIENT_ID}-mtls:{node.env['CLIENT_SECRET']}".encode()
    form = {"grant_type": "client_credentials", "resource": AUDIENCE, "scope": SCOPE}
    status, body = https(
        authorization_server.mtls + "/token",
        pki,
        "alice",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": "Basic " + base64.b64encode(basic).decode()},
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["token_type"] == "Bearer"
    token = answer["access_token"]
    MINTED.add(token)  # the run log is scanned for it at the end of the session
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["cnf"] == {"x5t#S256": thumbprint(pki.alice)}  # the server bound it to alice

    bearer = {"Authorization": f"Bearer {token}"}
    url = f"https://127.0.0.1:{certbound.port}/mtls/1"
    assert https(url, pki, "alice", headers=bearer)[0] == 200
    [seen] = upstream_seen.seen
    assert seen.headers["x-certbound-thumbprint"] == [thumbprint(pki.alice)]
    assert seen.headers["x-certbound-client-id"] == [f"{CLIENT_ID}-mtls"]
    status, body = https(url, pki, "bob", headers=bearer)
    assert (status, body.split(":")[0]) == (401, "401 thumbprint_mismatch")
    status, body = https(url, pki, None, headers=bearer)
    assert (status, body.split(":")[0]) == (401, "401 no_client_cert")
    # A certificate-bound token is not a DPoP token, whatever route it tries.
    status, body = https(url.replace("/mtls/", "/orders/"), pki, "alice", headers=bearer)
    assert (status, body.split(":")[0]) == (401, "401 wrong_binding_kind")
    assert len(upstream_seen.seen) == 1


def test_no_token_or_proof_reaches_any_log(
    node: Node,
    pki: PKI,
    authorization_server: AuthorizationServer,
    certbound: ProxyProcess,
    upstream_seen: Upstream,
) -> None:
    run = run_client(node, pki, authorization_server.issuer, certbound, "replay")
    assert [r["status"] for r in run.requests] == [200, 401]
    for name, text in (
        ("certbound", certbound.output()),
        ("server.mjs", authorization_server.output()),
        ("client.mjs", run.stderr + json.dumps(run.requests)),
    ):
        assert leaks(text, set()) == [], name

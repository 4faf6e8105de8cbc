"""`certbound demo`: throwaway PKI, an embedded token issuer with JWKS, an echo upstream and the
proxy, all on loopback, plus curl lines that show a bound token accepted and a replay refused."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from proxy import audit, server
from proxy.settings import (
    AdminSettings,
    ListenSettings,
    Settings,
    TLSSettings,
    TokenSettings,
    UpstreamSettings,
)
from proxy.tools.pki import Issued, issue, make_ca
from proxy.trust.identity import compute_thumbprint

ISSUER_KID = "demo-1"


@dataclass
class Issuer:
    """A tiny token issuer: one EC key, a JWKS document and a mint function. `url` is set
    once its listener is bound (the issuer must know its own URL for `iss`)."""

    key: ec.EllipticCurvePrivateKey
    kid: str
    url: str

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        public.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [public]}

    def mint(
        self,
        thumbprint: str | None,
        *,
        subject: str,
        audience: str,
        ttl: int = 3600,
        scope: str = "read",
        client_id: str = "demo-client",
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        if thumbprint is not None:
            claims["cnf"] = {"x5t#S256": thumbprint}
        return jwt.encode(
            claims, self.key, algorithm="ES256", headers={"kid": self.kid, "typ": "at+jwt"}
        )


def issuer_app(issuer: Issuer) -> web.Application:
    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks())

    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json"})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    return app


def echo_app() -> web.Application:
    """An upstream that answers with what it received: method, path and the identity headers."""

    async def echo(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
        seen = {k: v for k, v in request.headers.items() if k.lower().startswith("x-certbound-")}
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "body_bytes": size,
                "identity": seen,
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve_locally(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on a free loopback port; returns the runner and the port."""
    # Heads as large as certbound forwards (listen.max_header_bytes): aiohttp's default 8 KiB
    # line limit would refuse tokens with large group claims.
    runner = web.AppRunner(app, access_log=None, max_line_size=65536, max_field_size=65536)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


@dataclass(frozen=True)
class DemoPKI:
    directory: Path
    alice: Issued
    bob: Issued


def make_pki(directory: Path) -> DemoPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("certbound demo CA")
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    issue(
        ca,
        "localhost",
        server=True,
        client=False,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    ).write(directory, "server")
    alice = issue(ca, "alice", uris=("spiffe://demo/alice",))
    bob = issue(ca, "bob", uris=("spiffe://demo/bob",))
    alice.write(directory, "alice")
    bob.write(directory, "bob")
    return DemoPKI(directory, alice, bob)


async def _run(pki: DemoPKI, port: int, admin_port: int, exit_after: float | None) -> None:
    directory, alice = pki.directory, pki.alice

    upstream_runner, upstream_port = await serve_locally(echo_app())
    issuer = Issuer(key=ec.generate_private_key(ec.SECP256R1()), kid=ISSUER_KID, url="")
    issuer_runner, issuer_port = await serve_locally(issuer_app(issuer))
    issuer.url = issuer_url = f"http://127.0.0.1:{issuer_port}"

    audience = "https://demo.certbound.local"
    token = issuer.mint(compute_thumbprint(alice.cert_der), subject="alice", audience=audience)
    unbound = issuer.mint(None, subject="mallory", audience=audience)
    await asyncio.to_thread(_write_tokens, directory, token, unbound)

    settings = Settings(
        listen=ListenSettings(host="127.0.0.1", port=port),
        tls=TLSSettings(
            cert_file=str(directory / "server.pem"),
            key_file=str(directory / "server.key"),
            client_ca_file=str(directory / "ca.pem"),
        ),
        upstream=UpstreamSettings(url=f"http://127.0.0.1:{upstream_port}"),
        tokens=TokenSettings(issuer=issuer_url, audience=(audience,), algorithms=("ES256",)),
        admin=AdminSettings(host="127.0.0.1", port=admin_port),
    )
    proxy = await server.start(settings)
    await proxy.keys.wait_loaded()
    print(_instructions(directory, proxy.data_port, proxy.admin_port), flush=True)
    try:
        if exit_after is not None:
            await asyncio.sleep(exit_after)
        else:
            await server.until_signalled()
    finally:
        await server.stop(proxy, grace_seconds=1)
        await issuer_runner.cleanup()
        await upstream_runner.cleanup()


def _write_tokens(directory: Path, bound: str, unbound: str) -> None:
    (directory / "alice.token").write_text(bound + "\n")
    (directory / "unbound.token").write_text(unbound + "\n")


def curl_line(directory: Path, port: int, who: str, token_file: str | None, path: str) -> str:
    d = shlex.quote(str(directory))
    parts = [f"curl -sS --cacert {d}/ca.pem --cert {d}/{who}.pem --key {d}/{who}.key"]
    if token_file:
        parts.append(f'-H "Authorization: Bearer $(cat {d}/{token_file})"')
    parts.append(f"https://localhost:{port}{path}")
    return " ".join(parts)


def _instructions(directory: Path, port: int, admin_port: int) -> str:
    return "\n".join(
        [
            "",
            f"certbound demo is running: mTLS on https://localhost:{port}, "
            f"admin on http://127.0.0.1:{admin_port}",
            f"PKI and tokens in {directory}/ (throwaway; alice.token is bound to alice.pem)",
            "",
            "# (a) alice's certificate and alice's token -> 200 from the echo upstream",
            curl_line(directory, port, "alice", "alice.token", "/hello"),
            "",
            "# (b) the same token presented with bob's certificate -> 401 invalid_token",
            curl_line(directory, port, "bob", "alice.token", "/hello") + " -i",
            "",
            "# (c) no token -> 401, a challenge without an error code (Bearer and DPoP are taken)",
            curl_line(directory, port, "alice", None, "/hello") + " -i",
            "",
            "# (d) a token without cnf (not bound to any certificate) -> 401 invalid_token",
            curl_line(directory, port, "alice", "unbound.token", "/hello") + " -i",
            "",
            "# metrics, health",
            f"curl -s http://127.0.0.1:{admin_port}/metrics | grep certbound_requests_total",
            "",
            "Press Ctrl-C to stop.",
        ]
    )


def main(directory: Path, port: int, admin_port: int, exit_after: float | None) -> int:
    listener = audit.setup_logging("info")
    try:
        with asyncio.Runner(loop_factory=server.loop_factory("auto")) as runner:
            runner.run(_run(make_pki(directory), port, admin_port, exit_after))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"certbound demo: cannot start: {exc}")
        return 1
    finally:
        listener.stop()
    return 0

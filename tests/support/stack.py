"""The real parts most tests stand on: the session PKI's shape, a JWKS issuer with keys the tests
rotate, a recording upstream, the in-process proxy and its client, and the run's log collector
(test_zz_log_secrecy scans it for tokens). Fixtures that make them live in tests/conftest.py.
Nothing here mocks a socket."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from yarl import URL

from proxy import server
from proxy.settings import (
    AdminSettings,
    ListenSettings,
    Settings,
    TLSSettings,
    TokenSettings,
    UpstreamSettings,
)
from proxy.tools.demo import serve_locally
from proxy.tools.pki import Issued
from proxy.trust.identity import compute_thumbprint, thumbprint_of_pem
from tests.support.openssl_ca import Leaf, OpenSSLCA, curl_status
from tests.support.process import ProxyProcess

AUDIENCE = "https://orders.example"


NO_CREDENTIALS = 'Bearer, DPoP algs="ES256 PS256 EdDSA RS256"'


class _Collect(logging.Handler):
    """Keeps every log line of the whole run, so test_zz_log_secrecy can scan them for secrets."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


LOG = _Collect()


LOG.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))


logging.getLogger().addHandler(LOG)


logging.getLogger().setLevel(logging.DEBUG)


MINTED: set[str] = set()  # every token the test issuers signed


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca: Issued
    other_ca: Issued
    server: Issued
    alice: Issued
    bob: Issued
    expired: Issued
    server_only: Issued  # serverAuth EKU only
    stranger: Issued  # signed by other_ca

    def files(self, name: str) -> tuple[str, str]:
        return str(self.dir / f"{name}.pem"), str(self.dir / f"{name}.key")

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.pem")


def thumbprint(cert: Issued) -> str:
    return compute_thumbprint(cert.cert_der)


@dataclass
class Issuer:
    """A real JWKS endpoint (and RFC 8414 metadata) with keys the tests can rotate."""

    url: str = ""
    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    served: list[str] = field(default_factory=list)  # kids currently in the JWKS
    jwks_hits: int = 0
    available: bool = True

    def add_key(self, kid: str, kind: str = "ec", *, publish: bool = True) -> None:
        if kind == "rsa":
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.served.append(kid)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.served:
            key = self.keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            else:
                jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig")
            out.append(jwk)
        return {"keys": out}

    def claims(self, cert: Issued | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": "alice",
            "aud": AUDIENCE,
            "client_id": "orders-app",
            "scope": "orders:read",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        if cert is not None:
            claims["cnf"] = {"x5t#S256": thumbprint(cert)}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        cert: Issued | None = None,
        *,
        kid: str | None = None,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        kid = kid or self.served[-1]
        key = self.keys[kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        hdr = {"kid": kid, "typ": "at+jwt", **(headers or {})}
        token = jwt.encode(self.claims(cert, **overrides), key, algorithm=alg, headers=hdr)
        MINTED.add(token)
        return token

    def app(self) -> web.Application:
        async def jwks(_: web.Request) -> web.Response:
            self.jwks_hits += 1
            if not self.available:
                return web.Response(status=503)
            return web.json_response(self.jwks())

        async def metadata(_: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks.json"})

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        app.router.add_get("/.well-known/openid-configuration", metadata)
        return app


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, list[str]]
    body_bytes: int


@dataclass
class Upstream:
    """A real HTTP upstream that records every request it receives."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    delay: float = 0.0

    def app(self) -> web.Application:
        async def record(request: web.Request) -> web.StreamResponse:
            size = 0
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
            headers: dict[str, list[str]] = {}
            for k, v in request.headers.items():
                headers.setdefault(k.lower(), []).append(v)
            self.seen.append(Seen(request.method, request.raw_path, headers, size))
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.path == "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                async for message in ws:  # echo, upper-cased so a test sees the round trip
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await ws.send_str(message.data.upper())
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        await ws.send_bytes(message.data[::-1])
                return ws
            if request.path.startswith("/status/"):  # /status/204, /status/304, ...
                return web.Response(status=int(request.path[8:]), headers={"X-Status": "set"})
            if request.path == "/big":  # a large response, streamed in 64 KiB chunks
                resp = web.StreamResponse()
                resp.content_length = int(request.query["bytes"])
                await resp.prepare(request)
                chunk = b"y" * 65536
                for _ in range(resp.content_length // len(chunk)):
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            if request.path == "/stream":
                resp = web.StreamResponse()
                await resp.prepare(request)
                for _ in range(int(request.query.get("chunks", "10"))):
                    await resp.write(b"x" * 1024)
                    await asyncio.sleep(float(request.query.get("pause", "0")))
                await resp.write_eof()
                return resp
            return web.json_response({"ok": True, "path": request.raw_path, "bytes": size})

        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", record)
        return app


serve_app = serve_locally


def process_config(pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path) -> dict[str, Any]:
    """Config for a `certbound run` subprocess: keys from a file, so the process needs no
    network to become ready while the test's event loop is busy waiting for it."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    cert, key = pki.files("server")
    return {
        "tls": {"cert_file": cert, "key_file": key, "client_ca_file": pki.ca_file},
        "upstream": {"url": upstream.url},
        "tokens": {"issuer": issuer.url, "audience": AUDIENCE, "jwks_file": str(jwks)},
    }


def make_settings(pki: PKI, issuer: Issuer, upstream: Upstream, **tokens: Any) -> Settings:
    cert, key = pki.files("server")
    return Settings(
        listen=ListenSettings(host="127.0.0.1", port=0),
        tls=TLSSettings(cert_file=cert, key_file=key, client_ca_file=pki.ca_file),
        upstream=UpstreamSettings(url=upstream.url, timeout_seconds=2.0),
        tokens=replace(
            TokenSettings(issuer=issuer.url, audience=AUDIENCE, jwks_uri=issuer.url + "/jwks.json"),
            **tokens,
        ),
        admin=AdminSettings(host="127.0.0.1", port=0),
    )


@dataclass
class Running:
    proxy: server.Proxy
    pki: PKI
    issuer: Issuer
    upstream: Upstream

    @property
    def url(self) -> str:
        return f"https://localhost:{self.proxy.data_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.proxy.admin_port}"

    def client_ssl(self, who: str | None = "alice") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki.ca_file)
        if who is not None:
            ctx.load_cert_chain(*self.pki.files(who))
        return ctx

    async def request(
        self,
        method: str = "GET",
        path: str = "/orders",
        *,
        who: str | None = "alice",
        token: str | None = None,
        headers: Any = None,
        data: Any = None,
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs: list[tuple[str, str]] = list(
            headers.items() if isinstance(headers, dict) else headers or []
        )
        if token is not None:
            hdrs.append(("Authorization", f"Bearer {token}"))
        connector = aiohttp.TCPConnector(ssl=self.client_ssl(who))
        async with aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("User-Agent",)
        ) as s:
            # encoded=True: send the path exactly as written (yarl would resolve ../ itself).
            url = URL(self.url + path, encoded=True)
            async with s.request(method, url, headers=hdrs, data=data) as resp:
                return resp.status, dict(resp.headers), await resp.read()

    async def metric(self, sample: str) -> float:
        async with aiohttp.ClientSession() as s, s.get(self.admin + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return 0.0


StartProxy = Callable[..., Awaitable[Running]]


@dataclass(frozen=True)
class Legacy:
    """A CA made the way old scripts make them (openssl CLI, no key identifiers) and a leaf."""

    ca: OpenSSLCA
    leaf: Leaf
    bundle: Path  # the test CA and the legacy CA


def token_for(issuer: Issuer, leaf: Leaf) -> str:
    """A token bound to the certificate in `leaf`'s file."""
    return issuer.mint(cnf={"x5t#S256": thumbprint_of_pem(leaf.cert.read_bytes())})


async def orders_status(proc: ProxyProcess, pki: PKI, issuer: Issuer, leaf: Leaf) -> str:
    """curl's status for GET /orders with `leaf`'s certificate and a token bound to it
    ("000": no HTTP answer, the handshake or the connection refused)."""
    _, status, _ = await curl_status(
        proc.url + "/orders", pki.ca_file, leaf, token=token_for(issuer, leaf)
    )
    return status

"""Builds the two apps and binds them: the mTLS data plane and the plain-HTTP admin port.

The data-plane handler is the request path of design.md: identity -> token -> binding ->
forward, each a call into its own module, with one decision counted and audited at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import audit, metrics
from proxy.binding import check_binding
from proxy.config import Settings
from proxy.errors import AuthError, Outcome, Reason, error_response
from proxy.forward import Forwarder, upstream_request_headers
from proxy.identity import ClientIdentity, identity_from_der
from proxy.tls import ServerTLS
from proxy.tokens.extract import extract_bearer, form_has_token
from proxy.tokens.jwks import KeySet
from proxy.tokens.jwt import JWTVerifier, TokenCache, TokenClaims

log = logging.getLogger("certbound.server")

MAX_FORM_BYTES = 1 << 20
HANDSHAKE_TIMEOUT = 10.0


class _MTLSConnection(asyncio.Protocol):
    """One client connection: plain TCP, upgraded with `loop.start_tls`, then handed to
    aiohttp's protocol. Doing the handshake ourselves lets us count failed handshakes
    (asyncio's own server hides them) and read the client identity once per connection."""

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        identities: dict[object, ClientIdentity],
    ) -> None:
        self._make_handler = make_handler
        self._context = context
        self._identities = identities
        self._handler: asyncio.Protocol | None = None
        self._pending: list[bytes] = []
        self._upgrade: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Hold the ClientHello in the kernel until start_tls has installed the TLS layer.
        transport.pause_reading()
        self._upgrade = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                raw, self, self._context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            metrics.TLS_HANDSHAKE_FAILURES.inc()
            log.debug(
                "TLS handshake failed: %s", getattr(exc, "reason", None) or type(exc).__name__
            )
            raw.abort()
            return
        if tls is None or tls.is_closing():
            metrics.TLS_HANDSHAKE_FAILURES.inc()
            return
        ssl_object = tls.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        handler = self._make_handler()
        if der:
            self._identities[handler] = identity_from_der(der)
        metrics.OPEN_CONNECTIONS.inc()
        self._handler = handler
        handler.connection_made(tls)
        for data in self._pending:
            handler.data_received(data)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        # TLS may deliver the first request before start_tls has returned to us.
        if self._handler is None:
            self._pending.append(data)
        else:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handler is None:
            if self._upgrade is not None:
                self._upgrade.cancel()
            return
        metrics.OPEN_CONNECTIONS.dec()
        self._identities.pop(self._handler, None)
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


class MTLSSite(web.BaseSite):
    """aiohttp's TCPSite, but each connection does its own TLS handshake (_MTLSConnection)."""

    __slots__ = ("_host", "_identities", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        identities: dict[object, ClientIdentity],
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self._identities = identities
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        context = self._ssl_context
        assert context is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _MTLSConnection(server, context, self._identities),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = getattr(self._server, "sockets", None) or ()
        return int(sockets[0].getsockname()[1]) if sockets else self._port


@dataclass
class Proxy:
    """Everything a running proxy holds; built by `start`, torn down by `stop`."""

    settings: Settings
    tls: ServerTLS
    keys: KeySet
    verifier: JWTVerifier
    forwarder: Forwarder
    http: aiohttp.ClientSession
    identities: dict[object, ClientIdentity] = field(default_factory=dict)
    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)
    data_port: int = 0
    admin_port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        self.in_flight += 1
        self.idle.clear()
        try:
            return await self._decide_and_forward(request, started)
        finally:
            metrics.IN_FLIGHT.dec()
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def _decide_and_forward(self, request: web.Request, started: float) -> web.StreamResponse:
        identity = self.identities.get(request.protocol)
        claims: TokenClaims | None = None
        body: bytes | None = None
        try:
            if identity is None:
                raise AuthError(Reason.NO_CLIENT_CERT, "no client certificate")
            token = extract_bearer(request.headers.getall("Authorization", []), request.query)
            if request.content_type == "application/x-www-form-urlencoded":
                body = await _read_form(request)
                if form_has_token(body):
                    raise AuthError(
                        Reason.MALFORMED_REQUEST, "access tokens in a form body are not accepted"
                    )
            claims = await self.verifier.verify(token)
            check_binding(claims.cnf, identity.thumbprint)
        except AuthError as refusal:
            return self._refuse(request, refusal, identity, claims, started)
        headers = upstream_request_headers(
            request.headers,
            identity,
            claims,
            remote=request.remote or "",
            client_cert_header=self.settings.forwarding.client_cert_header,
        )
        try:
            response = await self.forwarder.forward(request, headers, started=started, body=body)
        except AuthError as fault:
            metrics.REQUESTS.labels(
                outcome=Outcome.UPSTREAM_ERROR.value, reason=fault.reason.value
            ).inc()
            self._audit(request, Outcome.UPSTREAM_ERROR, fault, identity, claims)
            return error_response(fault)
        metrics.REQUESTS.labels(outcome=Outcome.FORWARDED.value, reason=Reason.OK.value).inc()
        if self.settings.log.audit_accepted:
            self._audit(request, Outcome.FORWARDED, None, identity, claims, status=response.status)
        return response

    def _refuse(
        self,
        request: web.Request,
        refusal: AuthError,
        identity: ClientIdentity | None,
        claims: TokenClaims | None,
        started: float,
    ) -> web.Response:
        metrics.REQUESTS.labels(outcome=Outcome.REJECTED.value, reason=refusal.reason.value).inc()
        self._audit(request, Outcome.REJECTED, refusal, identity, claims)
        metrics.OVERHEAD.observe(time.perf_counter() - started)
        return error_response(refusal)

    def _audit(
        self,
        request: web.Request,
        outcome: Outcome,
        refusal: AuthError | None,
        identity: ClientIdentity | None,
        claims: TokenClaims | None,
        status: int = 200,
    ) -> None:
        cnf = claims.cnf if claims is not None else None
        expected = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        audit.write(
            audit.AuditRecord(
                outcome=outcome,
                reason=refusal.reason if refusal else Reason.OK,
                status=refusal.refusal.status if refusal else status,
                method=request.method,
                path=request.path[:512],
                remote=request.remote or "",
                thumbprint=identity.thumbprint if identity else "",
                cnf_thumbprint=expected[:64] if isinstance(expected, str) else "",
                jti=claims.jti[:128] if claims else "",
                sub=claims.subject[:256] if claims else "",
                client_id=claims.client_id[:256] if claims else "",
                iss=claims.issuer[:256] if claims else "",
            )
        )


async def _read_form(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise AuthError(Reason.MALFORMED_REQUEST, "form body too large to inspect")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise AuthError(Reason.MALFORMED_REQUEST, "form body too large to inspect")
    return body


def build_admin_app(proxy: Proxy) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if proxy.draining:
            return web.Response(status=503, text="draining\n")
        if not proxy.keys.is_loaded:
            return web.Response(status=503, text="signing keys not loaded\n")
        return web.Response(text="ready\n")

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


def build_data_app(proxy: Proxy) -> web.Application:
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


async def start(settings: Settings, *, shared_ports: bool = False) -> Proxy:
    """Bind both listeners and start background tasks. Raises TLSConfigError on bad files."""
    tls = ServerTLS(settings.tls)
    cache = TokenCache(settings.tokens.cache_size)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    keys = KeySet(settings.tokens, http, on_change=cache.clear)
    forwarder = Forwarder(settings.upstream)
    await forwarder.start()
    proxy = Proxy(
        settings=settings,
        tls=tls,
        keys=keys,
        verifier=JWTVerifier(settings.tokens, keys, cache),
        forwarder=forwarder,
        http=http,
    )
    admin_runner = web.AppRunner(build_admin_app(proxy), access_log=None)
    await admin_runner.setup()
    admin_site = web.TCPSite(
        admin_runner, settings.admin.host, settings.admin.port, reuse_port=shared_ports or None
    )
    await admin_site.start()
    proxy.runners.append(admin_runner)
    proxy.admin_port = _bound_port(admin_site)

    data_runner = web.AppRunner(build_data_app(proxy), access_log=None, handler_cancellation=True)
    await data_runner.setup()
    data_site = MTLSSite(
        data_runner,
        settings.listen.host,
        settings.listen.port,
        tls.listener,
        proxy.identities,
        reuse_port=shared_ports,
    )
    await data_site.start()
    proxy.runners.append(data_runner)
    proxy.data_port = data_site.port

    proxy.tasks.append(asyncio.create_task(keys.run(proxy.stop_event)))
    proxy.tasks.append(asyncio.create_task(tls.watch(proxy.stop_event)))
    log.info(
        "listening: mTLS on %s:%d, admin on %s:%d, upstream %s",
        settings.listen.host, proxy.data_port, settings.admin.host, proxy.admin_port,
        settings.upstream.url,
    )  # fmt: skip
    return proxy


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None) or ()
    return int(sockets[0].getsockname()[1]) if sockets else 0


async def stop(proxy: Proxy, grace_seconds: float = 30.0) -> None:
    """Drain: report not-ready, stop accepting, let in-flight requests finish, then close."""
    proxy.draining = True
    proxy.stop_event.set()
    for runner in reversed(proxy.runners):
        for site in list(runner.sites):
            await site.stop()
    if proxy.in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proxy.idle.wait(), timeout=grace_seconds)
    for runner in proxy.runners:
        await runner.cleanup()
    for task in proxy.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await proxy.forwarder.close()
    await proxy.http.close()


async def serve(
    settings: Settings, grace_seconds: float = 30.0, shared_ports: bool = False
) -> None:
    """Run until SIGTERM or SIGINT, then drain. `shared_ports`: one of several workers."""
    proxy = await start(settings, shared_ports=shared_ports)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("signal received: draining for up to %.0fs", grace_seconds)
    await stop(proxy, grace_seconds)
    log.info("stopped")

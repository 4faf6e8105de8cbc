"""Builds the two apps and binds them: the mTLS data plane and the plain-HTTP admin port;
start-up, readiness and the drain on shutdown. The request path itself is pipeline.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import metrics
from proxy.config import Settings
from proxy.forward import Forwarder
from proxy.forwarded import ForwardedCertVerifier
from proxy.identity import ClientIdentity
from proxy.listener import ConnectionLimit, MTLSSite, bound_port
from proxy.pipeline import Pipeline
from proxy.tls import ServerTLS
from proxy.tokens.introspect import Introspector
from proxy.tokens.jwks import KeySet
from proxy.tokens.jwt import JWTVerifier, TokenCache

log = logging.getLogger("certbound.server")


@dataclass
class Proxy:
    """Everything a running proxy holds; built by `start`, torn down by `stop`."""

    settings: Settings
    tls: ServerTLS
    keys: KeySet
    forwarder: Forwarder
    pipeline: Pipeline
    http: aiohttp.ClientSession
    introspector: Introspector | None = None
    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)
    data_port: int = 0
    admin_port: int = 0

    @property
    def has_keys(self) -> bool:
        """Signing keys are loaded, or not needed (every token is introspected)."""
        return self.keys.is_loaded or not self.settings.tokens.accept_jwt

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        self.in_flight += 1
        self.idle.clear()
        try:
            return await self.pipeline.handle(request, started)
        finally:
            metrics.IN_FLIGHT.dec()
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


def build_admin_app(proxy: Proxy) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if proxy.draining:
            return web.Response(status=503, text="draining\n")
        if not proxy.has_keys:
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
    header_source = settings.client_cert.source == "header"
    tls = ServerTLS(settings.tls, client_cert_optional=header_source)
    cache = TokenCache(settings.tokens.cache_size)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    keys = KeySet(settings.tokens, http, on_change=cache.clear)
    forwarder = Forwarder(settings.upstream)
    await forwarder.start()
    introspector: Introspector | None = None
    if settings.tokens.introspection.enabled:
        introspector = Introspector(settings.tokens)
        await introspector.start()
    forwarded_verifier = None
    if header_source:
        forwarded_verifier = ForwardedCertVerifier(settings.tls.client_ca_file)
        tls.on_reload.append(forwarded_verifier.reload)
    identities: dict[object, ClientIdentity] = {}
    pipeline = Pipeline(
        settings=settings,
        verifier=JWTVerifier(settings.tokens, keys, cache),
        forwarder=forwarder,
        introspector=introspector,
        identities=identities,
        forwarded_verifier=forwarded_verifier,
    )
    proxy = Proxy(
        settings=settings,
        tls=tls,
        keys=keys,
        forwarder=forwarder,
        pipeline=pipeline,
        http=http,
        introspector=introspector,
    )
    _announce(pipeline)
    admin_runner = web.AppRunner(build_admin_app(proxy), access_log=None)
    await admin_runner.setup()
    admin_site = web.TCPSite(
        admin_runner, settings.admin.host, settings.admin.port, reuse_port=shared_ports or None
    )
    await admin_site.start()
    proxy.runners.append(admin_runner)
    proxy.admin_port = bound_port(admin_site)

    data_runner = web.AppRunner(
        build_data_app(proxy),
        access_log=None,
        handler_cancellation=True,
        # Also the time a connection has to deliver a complete request: aiohttp's default
        # (3630 s) lets a slowloris client dribbling header bytes hold a connection for an hour.
        keepalive_timeout=settings.listen.idle_timeout_seconds,
    )
    await data_runner.setup()
    data_site = MTLSSite(
        data_runner,
        settings.listen.host,
        settings.listen.port,
        tls.listener,
        identities,
        ConnectionLimit(settings.listen.max_connections),
        reuse_port=shared_ports,
    )
    await data_site.start()
    proxy.runners.append(data_runner)
    proxy.data_port = bound_port(data_site)

    if settings.tokens.accept_jwt:
        proxy.tasks.append(asyncio.create_task(keys.run(proxy.stop_event)))
    proxy.tasks.append(asyncio.create_task(tls.watch(proxy.stop_event)))
    log.info(
        "listening: mTLS on %s:%d, admin on %s:%d, upstream %s",
        settings.listen.host,
        proxy.data_port,
        settings.admin.host,
        proxy.admin_port,
        settings.upstream.url,
    )
    return proxy


def _announce(pipeline: Pipeline) -> None:
    """Say loudly at start what could otherwise go unnoticed."""
    if pipeline.is_report_only_anywhere:
        metrics.REPORT_ONLY.set(1)
        log.warning(
            "REPORT-ONLY MODE: certificate binding failures are logged and counted "
            '(outcome="report_only") but such requests ARE FORWARDED. Set binding.mode: '
            "enforce (and remove per-route binding_mode) once the rollout is done."
        )
    else:
        metrics.REPORT_ONLY.set(0)
    if not pipeline.policy.is_enabled:
        log.info("no route policy configured: every request with a valid bound token is forwarded")
    if pipeline.settings.client_cert.source == "header":
        log.warning(
            "client certificates are taken from the %s header of peers in %s",
            pipeline.settings.client_cert.header_format,
            ", ".join(pipeline.settings.client_cert.trusted_proxies),
        )


async def stop(proxy: Proxy, grace_seconds: float = 30.0) -> None:
    """Drain: report not-ready, stop accepting, let in-flight requests finish, then close."""
    proxy.draining = True
    proxy.stop_event.set()
    # Stop accepting on the data plane only. The admin port (runners[0], see start) stays up
    # through the drain, so probes get /readyz 503 rather than connection refused, and the
    # drain can still be scraped from /metrics.
    admin, data = proxy.runners[:1], proxy.runners[1:]
    for runner in data:
        for site in list(runner.sites):
            await site.stop()
    if proxy.in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proxy.idle.wait(), timeout=grace_seconds)
    for runner in data + admin:
        await runner.cleanup()
    for task in proxy.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await proxy.forwarder.close()
    if proxy.introspector is not None:
        await proxy.introspector.close()
    await proxy.http.close()


async def until_signalled() -> None:
    """Return on SIGTERM or SIGINT (also when a parent shell started us with SIGINT ignored)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()


async def serve(
    settings: Settings, grace_seconds: float = 30.0, shared_ports: bool = False
) -> None:
    """Run until SIGTERM or SIGINT, then drain. `shared_ports`: one of several workers."""
    proxy = await start(settings, shared_ports=shared_ports)
    await until_signalled()
    log.info("signal received: draining for up to %.0fs", grace_seconds)
    await stop(proxy, grace_seconds)
    log.info("stopped")

"""Builds and binds the two listeners: the mTLS data plane (proxy/dataplane/) and the
plain-HTTP admin port (aiohttp); start-up, readiness and the drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import exposition, metrics
from proxy.capacity import Caps, connection_caps, memory_budget
from proxy.checks.pipeline import Pipeline
from proxy.config import read_nonce_key
from proxy.dataplane.admission import Admission
from proxy.dataplane.bodies import BodyBudget
from proxy.dataplane.listener import DataPlane
from proxy.dataplane.pool import UpstreamPool
from proxy.settings import DPoPSettings, Settings, trusted_issuers
from proxy.tokens.introspect import Introspector
from proxy.tokens.issuers import Issuers
from proxy.tokens.jwt import JWTVerifier, TokenCache
from proxy.tokens.replay_cache import SharedReplayCache
from proxy.trust.crlfetch import CRLFetcher
from proxy.trust.forwarded_cert import ForwardedCertVerifier
from proxy.trust.ocsp import OCSPChecker
from proxy.trust.tls import ServerTLS, crl_sources
from proxy.workers import NONCE_KEY_ENV, worker_count

log = logging.getLogger("certbound.server")


@dataclass
class Proxy:
    """Everything a running proxy holds; built by `start`, torn down by `stop`."""

    settings: Settings
    tls: ServerTLS
    keys: Issuers  # every trusted issuer's key set
    plane: DataPlane
    http: aiohttp.ClientSession
    introspector: Introspector | None = None
    shared_replays: SharedReplayCache | None = None
    draining: bool = False
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    admin: web.AppRunner | None = None
    # What the admin port answers about: this proxy, or the one a reload replaced it with.
    admin_target: AdminTarget | None = None
    data_port: int = 0
    admin_port: int = 0

    @property
    def pipeline(self) -> Pipeline:
        return self.plane.pipeline

    @property
    def has_keys(self) -> bool:
        """Every issuer's signing keys are loaded, or not needed (every token introspected)."""
        return self.keys.is_loaded or not self.settings.tokens.accept_jwt


@dataclass
class AdminTarget:
    """The proxy the admin port reports on; a reload points it at the new one."""

    proxy: Proxy


async def _no_server_header(_: web.Request, response: web.StreamResponse) -> None:
    # Our own answers name no software or version an attacker could look up.
    response.headers.popall("Server", None)


def build_admin_app(target: AdminTarget) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        proxy = target.proxy
        if proxy.draining:
            return web.Response(status=503, text="draining\n")
        if not proxy.has_keys:
            waiting = ", ".join(proxy.keys.not_loaded)
            return web.Response(status=503, text=f"signing keys not loaded: issuer {waiting}\n")
        return web.Response(text="ready\n")

    async def metrics_view(_: web.Request) -> web.Response:
        target.proxy.plane.publish()
        body = generate_latest(exposition.registry())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.on_response_prepare.append(_no_server_header)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start(
    settings: Settings, *, shared_ports: bool = False, takeover: Proxy | None = None
) -> Proxy:
    """Bind both listeners and start background tasks. Raises TLSConfigError on bad files.

    With `takeover` (a reload), nothing is bound: the admin port stays the running proxy's,
    and `take_over` later moves the data plane's sockets once this proxy is ready."""
    header_source = settings.client_cert.source == "header"
    tls = ServerTLS(
        settings.tls,
        client_cert_optional=header_source or settings.tls.client_cert == "optional",
    )
    cache = TokenCache(settings.tokens.cache_size)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    issuers = trusted_issuers(settings.tokens)
    claim_headers = settings.forwarding.claim_headers
    keys = Issuers(issuers, settings.tokens, http, on_change=cache.clear)
    metrics.retire(metrics.PER_ISSUER, "issuer", {"", *keys.names})
    introspector: Introspector | None = None
    for issuer in issuers:  # check-config allows one at most
        if issuer.introspection.enabled:
            introspector = Introspector(issuer, claim_headers)
            await introspector.start()
    forwarded_verifier = None
    if header_source:
        forwarded_verifier = ForwardedCertVerifier(
            settings.tls.client_ca_file, x509_strict=settings.tls.x509_strict
        )
        tls.on_reload.append(forwarded_verifier.reload)
    shared_replays = None
    if settings.dpop.replay_cache:
        shared_replays = SharedReplayCache(
            settings.dpop.replay_cache, settings.dpop.replay_cache_timeout_seconds
        )
    pipeline = Pipeline(
        settings=settings,
        verifier=JWTVerifier(keys, cache, claim_headers),
        introspector=introspector,
        forwarded_verifier=forwarded_verifier,
        issuer_names=keys.names,
        shared_replays=shared_replays,
        nonce_key=nonce_key(settings.dpop) if settings.dpop.nonce else b"",
    )
    plane = DataPlane(settings, tls, pipeline, UpstreamPool(settings.upstream))
    caps = connection_caps(
        settings.listen, worker_count(settings.listen.workers), memory_budget(settings.listen)
    )
    plane.admission = Admission(caps, settings.listen.handshake_timeout_seconds)
    plane.bodies = BodyBudget(caps.body_bytes)
    _announce_caps(caps)
    if settings.tls.ocsp == "leaf":
        checker = OCSPChecker(
            http, settings.tls.client_ca_file, settings.tls.revocation_unavailable == "allow"
        )
        plane.ocsp = checker
        tls.on_reload.append(lambda: checker.reload(settings.tls.client_ca_file))
    proxy = Proxy(
        settings=settings, tls=tls, keys=keys, plane=plane, http=http, introspector=introspector
    )
    proxy.shared_replays = shared_replays
    _announce(pipeline)
    if shared_replays is not None:
        # Not fatal: Redis may come up after us; until then replay_cache_unavailable decides.
        if await shared_replays.ping():
            log.info("DPoP replay cache: %s", shared_replays.where)
        else:
            log.warning("DPoP replay cache %s does not answer yet", shared_replays.where)
    if takeover is None:
        proxy.admin_target = AdminTarget(proxy)
        proxy.admin = web.AppRunner(build_admin_app(proxy.admin_target), access_log=None)
        await proxy.admin.setup()
        admin_site = web.TCPSite(
            proxy.admin, settings.admin.host, settings.admin.port, reuse_port=shared_ports or None
        )
        await admin_site.start()
        proxy.admin_port = int(proxy.admin.addresses[0][1])
    else:
        proxy.admin, proxy.admin_target = takeover.admin, takeover.admin_target
        proxy.admin_port = takeover.admin_port
    fetcher = None
    if settings.tls.fetch_crls:
        fetcher = CRLFetcher(
            crl_sources(settings.tls),
            len(settings.tls.crl_files),
            settings.tls.client_ca_file,
            http,
            settings.tls.crl_fetch_interval_seconds,
            tls.crls_fetched,
        )
        # Before the listener opens, so the first clients are not refused for want of a CRL;
        # bounded by the download timeout, and a failure here is retried, not fatal.
        await fetcher.refresh_all()
    fetched = {str(index) for index in fetcher.sources} if fetcher is not None else set()
    metrics.retire(metrics.PER_FETCHED_CRL, "index", fetched)
    if takeover is None:
        proxy.data_port = await plane.listen(
            settings.listen.host, settings.listen.port, reuse_port=shared_ports
        )
    if settings.tokens.accept_jwt:
        proxy.tasks.append(asyncio.create_task(keys.run(proxy.stop_event)))
    proxy.tasks.append(asyncio.create_task(tls.watch(proxy.stop_event)))
    if fetcher is not None:
        proxy.tasks.append(asyncio.create_task(fetcher.run(proxy.stop_event)))
    if takeover is not None:
        return proxy
    log.info(
        "listening: mTLS on %s:%d, admin on %s:%d, upstream %s, event loop %s",
        settings.listen.host,
        proxy.data_port,
        settings.admin.host,
        proxy.admin_port,
        settings.upstream.url,
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    return proxy


def _announce_caps(caps: Caps) -> None:
    log.info("connection caps: %s", caps.describe())
    if caps.is_budget_too_small:
        log.warning(
            "the memory budget leaves too little room for connections after each worker's "
            "own memory: the caps are raised to a minimum and a flood can exceed the budget; "
            "give the container more memory (resources.limits.memory) or fewer listen.workers"
        )


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
    dpop = pipeline.settings.dpop
    unrecorded_allowed = bool(dpop.replay_cache) and dpop.replay_cache_unavailable == "allow"
    metrics.DPOP_REPLAY_CACHE_UNAVAILABLE_ALLOWED.set(int(unrecorded_allowed))
    if unrecorded_allowed:
        log.warning(
            "dpop.replay_cache_unavailable is allow: while the replay cache does not answer, "
            "DPoP proofs are accepted without a replay check"
        )
    if dpop.nonce and not dpop.nonce_secret_file:
        log.info(
            "dpop.nonce: nonces are made with a key of this pod alone; with several replicas "
            "set dpop.nonce_secret_file (one Secret) or clients will be asked again per replica"
        )
    if not pipeline.policy.is_enabled:
        log.info("no route policy configured: every request with a valid bound token is forwarded")
    if pipeline.settings.client_cert.source == "header":
        log.warning(
            "client certificates are taken from the %s header of peers in %s",
            pipeline.settings.client_cert.header_format,
            ", ".join(pipeline.settings.client_cert.trusted_proxies),
        )


async def take_over(new: Proxy, old: Proxy) -> None:
    """A reload's hand-over: `new` accepts on the running sockets (connections waiting in
    their queue included), then the admin port reports on it and `old` stops accepting."""
    new.data_port = await new.plane.listen(
        new.settings.listen.host, 0, sockets=old.plane.listening_sockets()
    )
    old.plane.stop_accepting()
    if new.admin_target is not None:
        new.admin_target.proxy = new


async def stop(proxy: Proxy, grace_seconds: float = 30.0, *, keep_admin: bool = False) -> None:
    """Drain: report not-ready, stop accepting, let in-flight requests finish, then close.
    `keep_admin`: a reload replaced this proxy, whose admin port now serves the new one."""
    proxy.draining = True
    proxy.stop_event.set()
    # Stop accepting on the data plane only. The admin port stays up through the drain, so
    # probes get /readyz 503 rather than connection refused, and the drain can be scraped.
    proxy.plane.stop_accepting()
    proxy.plane.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proxy.plane.idle.wait(), timeout=grace_seconds)
    proxy.plane.close()
    if proxy.admin is not None and not keep_admin:
        await proxy.admin.cleanup()
    for task in proxy.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if proxy.introspector is not None:
        await proxy.introspector.close()
    if proxy.shared_replays is not None:
        await proxy.shared_replays.close()
    await proxy.http.close()


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """listen.event_loop: uvloop when asked for, or when installed and `auto`; None means
    asyncio's own loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":  # check-config refuses this; say it again if it got here
            raise
        return None
    return uvloop.new_event_loop


async def until_signalled() -> None:
    """Return on SIGTERM or SIGINT (also when a parent shell started us with SIGINT ignored)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()


def tune_gc() -> None:
    """After start-up: what was built so far (modules, config, keys) is never collected, and
    young collections run less often. Each request allocates a few dozen short-lived
    containers; at the default threshold (700) a collection ran every ~20 requests."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


def nonce_key(dpop: DPoPSettings) -> bytes:
    """The HMAC key of DPoP nonces: dpop.nonce_secret_file, the file the supervisor made for
    its workers, or a random key of this process alone."""
    path = dpop.nonce_secret_file or os.environ.get(NONCE_KEY_ENV, "")
    if path:
        return read_nonce_key(path)
    return secrets.token_bytes(32)

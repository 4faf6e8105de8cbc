"""What the connections of one listener share: settings read once, the checks, the upstream
pool, the connection set and its cap, requests in flight, and the drain flag. Binding the
listener is listener.py's job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from proxy import metrics
from proxy.capacity import connection_caps
from proxy.checks.pipeline import Pipeline
from proxy.dataplane.admission import Admission
from proxy.dataplane.bodies import BodyBudget
from proxy.dataplane.deadline import Timeouts
from proxy.dataplane.pool import UpstreamPool
from proxy.headers import dropped_request_headers
from proxy.settings import Settings
from proxy.tokens.claim_headers import claim_header_names
from proxy.trust.ocsp import OCSPChecker
from proxy.trust.tls import ServerTLS


class Drainable(Protocol):
    def drain(self) -> None: ...

    def abort(self) -> None: ...


class Plane:
    def __init__(
        self, settings: Settings, tls: ServerTLS, pipeline: Pipeline, pool: UpstreamPool
    ) -> None:
        self.tls = tls
        self.pipeline = pipeline
        self.pool = pool
        # The configured caps; server.start lowers them to the memory budget.
        self.admission = Admission(
            connection_caps(settings.listen, 1, 0), settings.listen.handshake_timeout_seconds
        )
        # What the connections' deadlines count on; a test gives its loop's virtual time.
        self.clock: Callable[[], float] = time.monotonic
        self.idle_timeout = settings.listen.idle_timeout_seconds
        self.send_timeout = settings.listen.send_timeout_seconds
        self.body_timeout = settings.listen.body_timeout_seconds
        self.request_buffer_bytes = settings.listen.request_buffer_bytes
        # No total until server.start knows the memory budget (capacity.Caps.body_bytes).
        self.bodies = BodyBudget(0)
        self.max_header_bytes = settings.listen.max_header_bytes
        self.upgrade_idle_timeout = settings.upstream.upgrade_idle_timeout_seconds
        self.upgrade_protocols = frozenset(p.lower() for p in settings.forwarding.upgrade_protocols)
        self.client_cert_header = settings.forwarding.client_cert_header
        self.dropped_request_headers = dropped_request_headers(
            claim_header_names(settings.forwarding.claim_headers),
            strip_authorization=settings.forwarding.authorization == "strip",
        )
        self.ocsp: OCSPChecker | None = None  # tls.ocsp: leaf (set by server.start)
        self.connections: set[Drainable] = set()
        self.draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            handshake=self.admission.handshake_timeout,
            idle=self.idle_timeout,
            body=self.body_timeout,
            send=self.send_timeout,
            upgrade_idle=self.upgrade_idle_timeout,
        )

    def request_started(self) -> None:
        if self.in_flight == 0:
            self.idle.clear()
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def publish(self) -> None:
        """Copy the in-flight count to its gauge: at every scrape, and each second for the
        other workers' scrapes. Two gauge updates per request cost more than the checks."""
        metrics.IN_FLIGHT.set(self.in_flight)

    def drain(self) -> None:
        """No new requests: idle connections close now, busy ones after their answer."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

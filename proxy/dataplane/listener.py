"""The mTLS listener and what its connections share: settings read once, the checks, the
upstream pool, the connection cap, requests in flight, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

from proxy import metrics
from proxy.checks.pipeline import Pipeline
from proxy.dataplane.connection import ClientConnection
from proxy.dataplane.upstream import UpstreamPool
from proxy.headers import dropped_request_headers
from proxy.settings import Settings
from proxy.tokens.claim_headers import claim_header_names
from proxy.trust.ocsp import OCSPChecker
from proxy.trust.tls import ServerTLS


class DataPlane:
    def __init__(
        self, settings: Settings, tls: ServerTLS, pipeline: Pipeline, pool: UpstreamPool
    ) -> None:
        self.tls = tls
        self.pipeline = pipeline
        self.pool = pool
        self.max_connections = settings.listen.max_connections
        self.idle_timeout = settings.listen.idle_timeout_seconds
        self.max_header_bytes = settings.listen.max_header_bytes
        self.upgrade_idle_timeout = settings.upstream.upgrade_idle_timeout_seconds
        self.upgrade_protocols = frozenset(p.lower() for p in settings.forwarding.upgrade_protocols)
        self.client_cert_header = settings.forwarding.client_cert_header
        self.dropped_request_headers = dropped_request_headers(
            claim_header_names(settings.forwarding.claim_headers),
            strip_authorization=settings.forwarding.authorization == "strip",
        )
        self.ocsp: OCSPChecker | None = None  # tls.ocsp: leaf (set by server.start)
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._servers: list[asyncio.Server] = []
        self._publisher: asyncio.TimerHandle | None = None

    async def listen(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        sockets: Sequence[socket.socket] = (),
    ) -> int:
        """Bind and accept, or accept on `sockets` (a reload takes over the running ones);
        returns the bound port (port 0 asks the kernel for a free one)."""
        loop = asyncio.get_running_loop()

        def accepted() -> ClientConnection:
            return ClientConnection(self)

        if sockets:
            self._servers = [
                await loop.create_server(accepted, sock=s, backlog=1024) for s in sockets
            ]
        else:
            self._servers = [
                await loop.create_server(
                    accepted, host, port, reuse_port=reuse_port or None, backlog=1024
                )
            ]
        self._publish_every_second()
        return int(self._servers[0].sockets[0].getsockname()[1])

    def listening_sockets(self) -> list[socket.socket]:
        """Copies (new descriptors) of the listening sockets: they stay open, with their
        queue of connections not yet accepted, after this data plane stops accepting."""
        return [
            socket.socket(fileno=os.dup(s.fileno()))
            for server in self._servers
            for s in server.sockets
        ]

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

    def _publish_every_second(self) -> None:
        self.publish()
        self._publisher = asyncio.get_running_loop().call_later(1.0, self._publish_every_second)

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    def drain(self) -> None:
        """No new requests: idle connections close now, busy ones after their answer."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    def close(self) -> None:
        """The end of the drain: whatever is still open (upgraded connections) is cut."""
        for conn in list(self.connections):
            conn.abort()
        self.pool.close()
        if self._publisher is not None:
            self._publisher.cancel()
        self.publish()

"""The mTLS listener: binds, accepts a ClientConnection per client, and ends the drain.
What the connections share is plane.Plane."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

from proxy.checks.pipeline import Pipeline
from proxy.dataplane.connection import ClientConnection
from proxy.dataplane.plane import Plane
from proxy.dataplane.pool import UpstreamPool
from proxy.settings import Settings
from proxy.trust.tls import ServerTLS


class DataPlane(Plane):
    def __init__(
        self, settings: Settings, tls: ServerTLS, pipeline: Pipeline, pool: UpstreamPool
    ) -> None:
        super().__init__(settings, tls, pipeline, pool)
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

    def _publish_every_second(self) -> None:
        self.publish()
        self._publisher = asyncio.get_running_loop().call_later(1.0, self._publish_every_second)

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    def close(self) -> None:
        """The end of the drain: whatever is still open (upgraded connections) is cut."""
        for conn in list(self.connections):
            conn.abort()
        self.pool.close()
        if self._publisher is not None:
            self._publisher.cancel()
        self.publish()

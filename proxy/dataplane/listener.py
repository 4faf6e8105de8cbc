"""The mTLS listener: binds, accepts a ClientConnection per client, and ends the drain.
What the connections share is plane.Plane."""

from __future__ import annotations

import asyncio

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
        self._server: asyncio.Server | None = None
        self._publisher: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Bind and accept; returns the bound port (port 0 asks the kernel for a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_port=reuse_port or None, backlog=1024
        )
        self._publish_every_second()
        return int(self._server.sockets[0].getsockname()[1])

    def _publish_every_second(self) -> None:
        self.publish()
        self._publisher = asyncio.get_running_loop().call_later(1.0, self._publish_every_second)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def close(self) -> None:
        """The end of the drain: whatever is still open (upgraded connections) is cut."""
        for conn in list(self.connections):
            conn.abort()
        self.pool.close()
        if self._publisher is not None:
            self._publisher.cancel()
        self.publish()

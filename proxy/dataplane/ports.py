"""The small protocols through which an exchange and the two sides of the data plane talk.

uvicorn's RequestResponseCycle is the model: the cycle holds a transport to write to, a flow
control object, and callbacks; it never reaches into the connection that made it. Here:

    client connection --(parser events)--> exchange --(ClientSide)--> client connection
    upstream connection --(ResponseSink)--> exchange --(UpstreamSide)--> upstream connection
    after a 101: client connection <--(TunnelEnd)--> upstream connection, the exchange gone

Flow control between the two sides lives in flow.Flow. Nothing here imports the modules that
implement these protocols, so the picture has no circle.
"""

from __future__ import annotations

from typing import Protocol

from proxy.dataplane.faults import UpstreamFault
from proxy.dataplane.flow import Flow, Readable


class TunnelEnd(Protocol):
    """One end of an upgraded connection: bytes from the other end, and its going away."""

    def tunnel_write(self, data: bytes) -> None: ...

    def tunnel_closed(self) -> None: ...


class ClientSide(TunnelEnd, Protocol):
    """What an exchange does to the client connection it answers."""

    def write(self, data: bytes) -> None: ...

    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def exchange_finished(self, exchange: object, *, close: bool, abort: bool) -> None:
        """The exchange is over: close (after what is written), abort, or serve the next."""

    def upgraded(self, upstream: TunnelEnd, rest: bytes) -> None:
        """The 101 is relayed: from now on the connection is wired straight to `upstream`."""


class ResponseSink(Protocol):
    """The response callbacks: what an upstream connection tells the exchange it serves."""

    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_complete(self) -> None: ...

    def upstream_upgraded(self, rest: bytes) -> None: ...

    def upstream_lost(self, upstream: UpstreamSide) -> None: ...

    def upstream_failed(self, fault: UpstreamFault, *, invalid: bool = False) -> None: ...


class UpstreamSide(Readable, TunnelEnd, Protocol):
    """What an exchange does to the upstream connection serving it."""

    is_reusable: bool
    has_response_bytes: bool
    is_lost: bool

    def begin(self, sink: ResponseSink, flow: Flow, *, skip_body: bool) -> None: ...

    def write(self, data: bytes) -> None: ...

    def await_response(self) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...

    def wire(self, peer: TunnelEnd) -> None:
        """After a 101: bytes from the workload go straight to `peer`."""

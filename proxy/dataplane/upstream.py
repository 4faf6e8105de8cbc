"""One connection to the workload: a protocol object that parses the response (C parser) and
hands it to the exchange it serves through the response callbacks (ports.ResponseSink); after
a 101 it is wired straight to the client connection (ports.TunnelEnd). The pool that holds
these is pool.py.

An idle connection the workload closes leaves the pool at once (connection_lost), so a
request is rarely written to a dead socket; when it is, the exchange may retry (exchange.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

import httptools

from proxy.dataplane.faults import UpstreamFault
from proxy.dataplane.flow import Flow
from proxy.dataplane.ports import ResponseSink, TunnelEnd

KEEPALIVE_SECONDS = 30.0  # an idle pooled connection is closed after this
MAX_RESPONSE_HEAD = 256 * 1024  # the workload is trusted, but not with our memory


class Owner(Protocol):
    """The pool a connection belongs to, as the connection sees it."""

    timeout: float  # upstream.timeout_seconds

    def release(self, conn: UpstreamConnection) -> None: ...

    def forget(self, conn: UpstreamConnection) -> None: ...


class _NoCallbacks:
    """What a closed connection's parser points at instead of the connection."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to the workload; serves one exchange at a time."""

    __slots__ = (
        "_flow",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_is_waiting",
        "_last_read",
        "_parser",
        "_peer",
        "_reading_paused",
        "_reason",
        "_sink",
        "_skip_body",
        "_timer",
        "has_response_bytes",
        "idle_since",
        "is_lost",
        "is_reusable",
        "pool",
        "transport",
    )

    def __init__(self, pool: Owner) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._sink: ResponseSink | None = None  # the exchange served now
        self._flow: Flow | None = None  # its client's flow control
        self._peer: TunnelEnd | None = None  # after a 101: the client connection
        self.is_reusable = True
        self.is_lost = False
        self.idle_since = 0.0
        self.has_response_bytes = False
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = False
        self._skip_body = False
        self._reading_paused = False
        self._last_read = 0.0
        self._is_waiting = False  # a request is sent and its answer not complete
        self._timer: asyncio.TimerHandle | None = None

    # -- ports.UpstreamSide: used by the exchange ----------------------------------------

    def begin(self, sink: ResponseSink, flow: Flow, *, skip_body: bool) -> None:
        """Serve one exchange; `skip_body`: it is a HEAD request, whose answer has no body
        even when it carries a Content-Length (the parser cannot be told, so we stop it)."""
        self._sink = sink
        self._flow = flow
        self._skip_body = skip_body
        self.has_response_bytes = False

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def await_response(self) -> None:
        """The request is sent: from now on the workload has timeout_seconds between reads.
        The timer stays armed across exchanges and re-arms itself lazily: a request only
        moves a timestamp."""
        self._last_read = time.monotonic()
        self._is_waiting = True
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.pool.timeout, self._check_timeout
            )

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self._last_read = time.monotonic()
            self.transport.resume_reading()

    def wire(self, peer: TunnelEnd) -> None:
        """After a 101: bytes from the workload go straight to `peer`, the exchange is out."""
        self._peer = peer
        self._sink = None
        self._cancel_timer()

    def tunnel_write(self, data: bytes) -> None:
        self.write(data)

    def tunnel_closed(self) -> None:
        self.close()

    def close(self) -> None:
        """Close without reuse (a broken or unfinished exchange, or a tunnel's end)."""
        self.is_reusable = False
        self._sink = None
        self._flow = None
        self._peer = None
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def finish(self) -> None:
        """The exchange is over: back to the pool, or closed."""
        self._sink = None
        self._flow = None
        self._is_waiting = False
        if self.is_reusable and not self.is_lost and self._peer is None:
            self.resume_reading()  # its last client may have held it back
            self.pool.release(self)
        else:
            self.close()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            self._peer.tunnel_write(data)
            return
        sink = self._sink
        if sink is None:
            # Bytes while idle: the workload broke framing. Never hand this one out again.
            self.close()
            return
        self._last_read = time.monotonic()
        self.has_response_bytes = True
        sink.cork()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            sink.upstream_upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError:
            # Includes a callback's own failure (HttpParserCallbackError).
            self.is_reusable = False
            sink.upstream_failed(UpstreamFault("reset"), invalid=True)
        finally:
            sink.uncork()

    def eof_received(self) -> bool:
        return False  # close; connection_lost tells the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_lost = True
        self._cancel_timer()
        self.pool.forget(self)
        sink, peer = self._sink, self._peer
        self._sink = self._flow = self._peer = None
        if peer is not None:
            peer.tunnel_closed()
        elif sink is not None:
            sink.upstream_lost(self)
        # The parser holds this protocol: break the cycle so it is freed at once.
        self._parser = httptools.HttpResponseParser(_NoCallbacks())

    def pause_writing(self) -> None:
        if self._flow is not None:
            self._flow.upstream_write_paused()

    def resume_writing(self) -> None:
        if self._flow is not None:
            self._flow.upstream_write_resumed()

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._head_bytes = 0
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailers are not relayed
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise ValueError("response head too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        sink = self._sink
        assert sink is not None
        status = self._parser.get_status_code()
        if not self._parser.should_keep_alive():
            self.is_reusable = False
        sink.response_head(status, self._reason, self._headers)
        if self._skip_body and status >= 200:
            # The answer to HEAD ends with its head; a fresh parser for the next one.
            self._parser = httptools.HttpResponseParser(self)
            sink.response_complete()

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            self._sink.response_body(body)

    def on_message_complete(self) -> None:
        sink = self._sink
        if sink is not None and self._parser.get_status_code() >= 200:
            sink.response_complete()

    # -- timeout -------------------------------------------------------------------------

    def _check_timeout(self) -> None:
        self._timer = None
        if self._peer is not None or self.is_lost:
            return
        idle = time.monotonic() - self._last_read
        if self._sink is None or not self._is_waiting:
            if idle < KEEPALIVE_SECONDS:  # pooled: stay armed for the next exchange
                self._timer = asyncio.get_running_loop().call_later(
                    self.pool.timeout, self._check_timeout
                )
            return
        if self._reading_paused or idle < self.pool.timeout:
            # Paused: the client is slow, not the workload.
            delay = self.pool.timeout - (0 if self._reading_paused else idle)
            self._timer = asyncio.get_running_loop().call_later(delay, self._check_timeout)
            return
        sink = self._sink
        self.close()
        sink.upstream_failed(UpstreamFault("timeout"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

"""One client connection: TLS, identity, HTTP/1.1 requests in order, flow control, timers.

TLS runs here over memory BIOs rather than in the event loop's own TLS transport, for three
reasons: every failed handshake is seen and counted (asyncio's server hides them), the same
code runs on asyncio's loop and on uvloop, and a request costs one decrypt and one encrypt
call with nothing layered between them and the parser. The client certificate is read once,
when the handshake completes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import httptools

from proxy import metrics
from proxy.checks.pipeline import Seen
from proxy.checks.request import Request
from proxy.dataplane.deadline import STALL_GRACE, Action, Moments, Phase, decide
from proxy.dataplane.exchange import Exchange
from proxy.dataplane.facts import ConnectionFacts
from proxy.dataplane.flow import Flow
from proxy.dataplane.http1 import MAX_HEADER_COUNT, error_response, read_head, too_large
from proxy.dataplane.plane import Plane
from proxy.dataplane.ports import TunnelEnd
from proxy.errors import AuthError, HandshakeFailure
from proxy.trust import handshake
from proxy.trust.channel import HandshakeRefused, TLSBroken, TLSChannel

log = logging.getLogger("certbound.dataplane")

TLS_HANDSHAKE_RECORD = 0x16
NOT_TLS_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 85\r\n\r\n"
    b"This port speaks HTTPS with a client certificate (mutual TLS); plain HTTP was sent.\r\n"
)

_HANDSHAKE, _OPEN, _UPGRADING, _TUNNEL, _CLOSED = range(5)


class _Stop(Exception):
    """Raised in a parser callback to stop parsing; the reason is kept on the connection."""


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_body_progress",
        "_broken",
        "_cork",
        "_counted",
        "_got_bytes",
        "_head_bytes",
        "_head_fed",
        "_head_started",
        "_headers",
        "_in_head",
        "_is_closing",
        "_last",
        "_opened",
        "_parser",
        "_peer_done",
        "_queue",
        "_receiving",
        "_remote",
        "_send_progress",
        "_send_queued",
        "_state",
        "_stop_reason",
        "_timer",
        "_tls",
        "_transport",
        "_tunnel_buffer",
        "_url",
        "facts",
        "flow",
        "plane",
        "tunnel",
    )

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.facts = ConnectionFacts()
        self.flow = Flow()
        self.tunnel: TunnelEnd | None = None  # after a 101: the upstream connection
        self._transport: asyncio.Transport | None = None
        self._state = _HANDSHAKE
        self._tls: TLSChannel | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._remote = ""
        self._active: Exchange | None = None
        self._receiving: Exchange | None = None
        # A list, not a deque: an empty deque holds a 64-slot block (0.6 KB per idle
        # connection), and pipelined requests are few.
        self._queue: list[Exchange] = []
        self._cork: list[bytes] | None = None
        self._is_closing = False
        self._peer_done = False
        self._broken: AuthError | None = None  # a framing refusal, answered in turn
        self._stop_reason: AuthError | None = None
        self._tunnel_buffer: list[bytes] = []
        self._opened = self._last = self.plane.clock()
        self._timer: asyncio.TimerHandle | None = None
        # The client's send buffer while it is full: its size and when it last shrank.
        self._send_queued = 0
        self._send_progress = 0.0
        self._body_progress = 0.0  # when the body being received last brought a byte
        self._got_bytes = False
        self._counted = False
        # The head being parsed.
        self._in_head = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # counted in the parser's callbacks: exact
        self._head_fed = 0  # fed to the parser while in a head: an upper bound
        self._head_started = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else ""
        if not self.plane.admission.admit(self, len(self.plane.connections), self._remote):
            transport.abort()  # over the cap: closed before a handshake is spent on it
            return
        self.plane.connections.add(self)
        self._counted = True
        self._transport = transport
        self.flow.attach(transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else ""
        self._tls = TLSChannel(self.plane.tls.current)
        self._arm(self.plane.admission.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        self._last = self.plane.clock()
        state = self._state
        if state == _OPEN:
            plaintext = self._decrypt(data)
            if plaintext:
                self._feed(plaintext)
        elif state == _HANDSHAKE:
            self._handshake(data)
        elif state == _TUNNEL:
            plaintext = self._decrypt(data)
            if plaintext and self.tunnel is not None:
                self.tunnel.tunnel_write(plaintext)
        elif state == _UPGRADING:
            plaintext = self._decrypt(data)
            if plaintext:
                self._tunnel_buffer.append(plaintext)
                self.flow.pause_reading("upgrade")

    def eof_received(self) -> bool:
        self._peer_finished()
        return True  # keep our side open to finish a response; close() ends it

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self._state != _HANDSHAKE
        self._state = _CLOSED
        self._closing()
        if not self._counted:
            return
        self._counted = False
        self.plane.connections.discard(self)
        self.plane.admission.forget(self)
        if not was_open:
            if self._got_bytes:  # a TCP probe that never spoke TLS is not a failed handshake
                handshake.refused(
                    HandshakeFailure.OTHER, self._remote, "the client left during the handshake"
                )
            self._release()
            return
        metrics.OPEN_CONNECTIONS.dec()
        for exchange in (self._active, *self._queue):
            if exchange is not None:
                exchange.client_lost()
        self._active = None
        self._queue.clear()
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            metrics.UPGRADED_CONNECTIONS.dec()
            tunnel.tunnel_closed()
        self._release()

    def _release(self) -> None:
        """Drop what refers back to us (the parser holds this protocol, an exchange holds its
        connection): freed by reference counting now, with its TLS state, not by a later
        cyclic collection."""
        self._parser = None
        self._receiving = None
        self._tls = None
        self.facts = ConnectionFacts()
        self.flow.pair(None)

    def pause_writing(self) -> None:
        self.flow.client_write_paused()
        self._send_progress = self.plane.clock()
        self._send_queued = self._write_buffer_size()
        if self._timer is not None and not self._is_closing:  # closing: its abort timer stays
            self._cancel_timer()
            self._arm(min(self.plane.send_timeout, STALL_GRACE))

    def resume_writing(self) -> None:
        self._last = self.plane.clock()
        self.flow.client_write_resumed()

    # -- TLS -----------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        assert self._tls is not None and self._transport is not None
        if not self._got_bytes:
            self._got_bytes = True
            if data[0] != TLS_HANDSHAKE_RECORD:
                self._not_tls(data)
                return
        try:
            done = self._tls.handshake(data, self._remote)
        except HandshakeRefused:
            self._flush()  # the alert tells the client why
            self._counted_failure_close()
            return
        self._flush()
        if not done:
            return
        self._established()
        if self._is_closing:
            return
        # The first request can arrive with the client's Finished.
        plaintext = self._decrypt(b"")
        if plaintext:
            self._feed(plaintext)

    def _counted_failure_close(self) -> None:
        self._got_bytes = False  # counted already; connection_lost must not count it again
        assert self._transport is not None
        self._transport.close()

    def _not_tls(self, data: bytes) -> None:
        assert self._transport is not None
        if data[:1].isalpha():  # looks like a request line: say what went wrong, as nginx does
            self._transport.write(NOT_TLS_ANSWER)
            detail = "plain HTTP sent to the mTLS port; answered 400 (use https)"
        else:
            detail = f"not a TLS record (first byte 0x{data[0]:02x})"
        handshake.refused(HandshakeFailure.NOT_TLS, self._remote, detail)
        self._counted_failure_close()

    def _established(self) -> None:
        assert self._tls is not None
        der = self._tls.peer_certificate()
        if der:
            tls = self.plane.tls
            # Every handshake, full or resumed: readable, in its validity period, not revoked.
            admitted = handshake.admit(
                der, self._remote, tls.revocation, tls.allow_unknown_revocation
            )
            if admitted is None:
                # Refused (counted and logged): closed before any request is read.
                self._is_closing = True
                self._counted_failure_close()
                return
            certificate, self.facts.identity = admitted
            if self.plane.ocsp is not None:
                # Asked now, answered beside the connection; its first request waits.
                self.facts.ocsp = self.plane.ocsp.begin(certificate)
        self._state = _OPEN
        self.plane.admission.handshake_over(self)
        self.plane.admission.idles(self)
        self._parser = httptools.HttpRequestParser(self)
        metrics.OPEN_CONNECTIONS.inc()
        self._cancel_timer()
        self._arm(self.plane.idle_timeout)

    def _decrypt(self, data: bytes) -> bytes:
        assert self._tls is not None
        try:
            plaintext, closed = self._tls.decrypt(data)
        except TLSBroken as exc:
            log.debug("TLS error from %s: %s", self._remote, exc)
            self.abort()
            return b""
        if closed:
            self._peer_finished()
        return plaintext

    def _flush(self) -> None:
        if self._tls is not None and self._transport is not None:
            out = self._tls.outgoing()
            if out:
                self._transport.write(out)

    # -- ports.ClientSide: used by the exchange -------------------------------------------

    def write(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork.append(data)
        elif not self._is_closing:
            assert self._tls is not None and self._transport is not None
            self._transport.write(self._tls.encrypt(data))

    def cork(self) -> None:
        """Collect writes until uncork(): a small response's head and body in one record."""
        if self._cork is None:
            self._cork = []

    def uncork(self) -> None:
        pieces, self._cork = self._cork, None
        if pieces:
            self.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def tunnel_write(self, data: bytes) -> None:
        self._last = self.plane.clock()
        self.write(data)

    def tunnel_closed(self) -> None:
        """The workload closed the upgraded connection."""
        self.tunnel = None
        metrics.UPGRADED_CONNECTIONS.dec()
        self.close()

    # -- HTTP/1.1 ------------------------------------------------------------------------

    def _feed(self, plaintext: bytes) -> None:
        assert self._parser is not None
        if self._in_head:
            # httptools keeps a partial header line to itself; count it here so a head that
            # never ends cannot grow without bound.
            self._head_fed += len(plaintext)
        try:
            self._parser.feed_data(plaintext)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrading(plaintext[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            reason, self._stop_reason = self._stop_reason, None
            if reason is not None:
                self._framing_failed(reason)
            elif not self._is_closing:
                log.error("internal error on the request path", exc_info=exc.__context__)
                self._framing_failed(AuthError.internal())
            return
        except httptools.HttpParserError as exc:
            # llhttp's messages name the rule, never the bytes: safe to pass on.
            self._framing_failed(AuthError.malformed(f"the request is not valid HTTP/1.1: {exc}"))
            return
        if self._in_head and self._head_fed > self.plane.max_header_bytes:
            self._framing_failed(too_large(self.plane.max_header_bytes))

    def _framing_failed(self, refusal: AuthError) -> None:
        """A request the framing step refuses: nothing after it on this connection is read."""
        self.flow.pause_reading("broken")
        self._in_head = False
        request = Request("", self._url.decode("latin-1")[:512], (), (), self._remote)
        self.plane.pipeline.refused(request, refusal, Seen())
        receiving = self._receiving
        if receiving is not None and not receiving.is_request_done and not receiving.is_finished:
            # The body of a request already on its way went wrong.
            if receiving is self._active:
                receiving.answer_broken(refusal)
                return
            self._queue.remove(receiving)
        if self._active is None:
            self.write(error_response(refusal, close=True))
            self.close()
        else:
            self._broken = refusal

    def _upgrading(self, rest: bytes) -> None:
        """The upgrade request is parsed; what follows belongs to the new protocol."""
        if self._is_closing:
            return
        self._state = _UPGRADING
        if rest:
            self._tunnel_buffer.append(rest)
        self.flow.pause_reading("upgrade")

    def on_message_begin(self) -> None:
        if self._is_closing:
            raise _Stop
        self._in_head = True
        self.plane.admission.busy(self)
        self._url = b""
        self._headers = []
        self._head_bytes = self._head_fed = 0
        self._head_started = self.plane.clock()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: never forwarded
        self._headers.append((name, value))
        self._count_head(len(name) + len(value) + 4)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        limit = self.plane.max_header_bytes
        if self._head_bytes > limit or len(self._headers) > MAX_HEADER_COUNT:
            self._stop_reason = too_large(limit)
            raise _Stop

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        assert parser is not None
        try:
            head = read_head(
                parser.get_method(),
                self._url,
                parser.get_http_version(),
                self._headers,
                self._remote,
                self.plane.upgrade_protocols,
            )
        except AuthError as refusal:
            self._stop_reason = refusal
            raise _Stop from None
        self._headers = []  # read_head kept what it needs
        if head.has_body:
            self._body_progress = self.plane.clock()
            if self.plane.body_timeout < self.plane.idle_timeout:
                self._cancel_timer()  # the shorter deadline is checked in time
                self._arm(self.plane.body_timeout)
        exchange = Exchange(head, self, self.flow, self.facts, self.plane)
        self._receiving = exchange
        if self._active is None and self._broken is None:
            self._active = exchange
            exchange.start()
        else:
            self._queue.append(exchange)
            self.flow.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        self._body_progress = self.plane.clock()
        if self._receiving is not None:
            self._receiving.request_body(body)

    def on_message_complete(self) -> None:
        if self._receiving is not None:
            self._receiving.request_complete()

    def exchange_finished(self, exchange: object, *, close: bool, abort: bool) -> None:
        if exchange is self._active:
            self._active = None
        receiving = self._receiving
        if receiving is not None and exchange is receiving and receiving.is_request_done:
            self._receiving = None  # an idle connection holds no request
        if abort:
            self.abort()
        elif close or self._is_closing or self.plane.draining:
            self.close()
        elif self._queue:
            # Pipelined: the next request starts after this one's answer, from the loop (a
            # long run of refusals would otherwise recurse).
            asyncio.get_running_loop().call_soon(self._start_next)
        elif self._broken is not None:
            refusal, self._broken = self._broken, None
            self.write(error_response(refusal, close=True))
            self.close()
        elif self._peer_done:
            self.close()
        else:
            self._last = self.plane.clock()
            self.plane.admission.idles(self)

    def _start_next(self) -> None:
        if self._is_closing or self._active is not None or not self._queue:
            return
        self._active = self._queue.pop(0)
        if not self._queue:
            self.flow.resume_reading("pipeline")
        self._active.start()

    def _peer_finished(self) -> None:
        """The client sent close_notify or FIN: answer what is in progress, then close. A
        request whose body is still arriving never will: it is cut, its upstream freed now."""
        self._peer_done = True
        if self._is_receiving_body():
            self.abort()
            return
        if self._active is None and not self._queue and self._state != _UPGRADING:
            self.close()

    # -- upgraded connections ------------------------------------------------------------

    def upgraded(self, upstream: TunnelEnd, rest: bytes) -> None:
        """The 101 is relayed: from now on bytes go through unchanged, both ways, between
        this connection and `upstream`; no exchange stands between them."""
        self._active = None
        self._receiving = None
        self.tunnel = upstream
        self._state = _TUNNEL
        metrics.UPGRADED_CONNECTIONS.inc()
        if rest:
            self.write(rest)
        if self._tunnel_buffer:
            upstream.tunnel_write(b"".join(self._tunnel_buffer))
            self._tunnel_buffer = []
        self.flow.resume_reading("upgrade")
        self._cancel_timer()
        self._arm(self.plane.upgrade_idle_timeout)

    # -- closing and timers --------------------------------------------------------------

    def close(self) -> None:
        """Close after what is written: close_notify, then FIN."""
        if self._is_closing or self._transport is None:
            return
        self.uncork()
        self._closing()
        if self._tls is not None and self._state != _HANDSHAKE:
            self._transport.write(self._tls.close_notify())
        self._transport.close()
        if self._write_buffer_size():
            # close() waits for the buffer to drain: a client that reads nothing would hold
            # the connection forever (nginx's send_timeout applies here too).
            self._timer = asyncio.get_running_loop().call_later(
                self.plane.send_timeout, self._transport.abort
            )

    def cut(self) -> None:
        """listen.max_handshakes: counted there as a refusal, not as a failed handshake."""
        self._got_bytes = False
        self.abort()

    def is_idle(self) -> bool:
        return (
            self._state == _OPEN
            and not self._is_closing
            and self._active is None
            and self._receiving is None
            and not self._queue
            and not self._in_head
        )

    def abort(self) -> None:
        self._closing()
        if self._transport is not None:
            self._transport.abort()

    def drain(self) -> None:
        """Shutting down: an idle connection closes now, a busy one after its answer."""
        if self._state == _HANDSHAKE or (self._active is None and not self._in_head):
            if self._state != _TUNNEL:
                self.close()

    def _closing(self) -> None:
        self._is_closing = True
        self.flow.detach()  # a closing transport is neither paused nor resumed
        self._cancel_timer()

    def _write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _is_receiving_body(self) -> bool:
        receiving = self._receiving
        return (
            receiving is not None
            and receiving.head.has_body
            and not receiving.is_request_done
            and not receiving.is_finished
        )

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """One timer per connection, re-armed lazily: activity only moves a timestamp."""
        self._timer = None
        if self._is_closing:
            return
        now = self.plane.clock()
        phase = self._phase()
        if phase is Phase.SENDING:
            queued = self._write_buffer_size()
            if queued < self._send_queued:
                self._send_queued, self._send_progress = queued, now
        elif phase is Phase.BODY and self.flow.is_reading_paused:
            self._body_progress = now  # we hold its reading back: the client is not late
        active = self._active
        moments = Moments(
            opened=self._opened,
            last=self._last,
            head_started=self._head_started,
            body_progress=self._body_progress,
            send_progress=self._send_progress,
            is_upstream_wanted=(
                active is not None and active.upstream is not None and self.plane.pool.is_contended
            ),
        )
        verdict = decide(phase, moments, self.plane.timeouts, now)
        action = verdict.action
        if action is Action.WAIT:
            self._arm(verdict.delay)
        elif action is Action.ABORT_HANDSHAKE:
            handshake.refused(
                HandshakeFailure.TIMEOUT,
                self._remote,
                f"no complete handshake within {self.plane.admission.handshake_timeout:g} s",
            )
            self._got_bytes = False
            self.abort()
        elif action is Action.ABORT_SEND:
            log.info(
                "client %s read nothing for %.1f s (listen.send_timeout_seconds %g%s): aborted",
                self._remote,
                verdict.stalled,
                self.plane.send_timeout,
                "; its upstream connection was wanted" if verdict.was_upstream_wanted else "",
            )
            if active is not None:
                metrics.UPSTREAM_ERRORS.labels(kind="send_timeout").inc()
            self.abort()
        elif action is Action.BODY_TIMED_OUT:
            receiving = self._receiving
            assert receiving is not None
            if receiving is active:
                receiving.body_timed_out()
            else:
                self.abort()
        else:
            self.close()

    def _phase(self) -> Phase:
        """What the connection waits for now; the order is the precedence."""
        state = self._state
        active = self._active
        if state == _HANDSHAKE:
            return Phase.HANDSHAKE
        if self.flow.is_write_paused:
            return Phase.SENDING
        if state == _TUNNEL:
            return Phase.TUNNEL
        if self._in_head:
            return Phase.HEAD
        if self._is_receiving_body():
            return Phase.BODY
        if state == _UPGRADING or (active is not None and active.is_request_done):
            return Phase.WORKLOAD
        return Phase.KEEP_ALIVE

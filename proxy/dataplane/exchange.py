"""One request and its response: checks, then the rebuilt head and the body to a pooled
upstream connection, then the response relayed to the client with its own framing.

Driven entirely by callbacks (parser events from both sides). A request whose token is
cached runs without a task or an await; only a JWKS fetch, an introspection call or a new
upstream connection goes through a task. It talks to its two sides through the protocols in
ports.py (it never sees the connection objects), to flow control through flow.Flow, and is
out of the picture once a 101 has wired the two sides to each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from proxy import metrics
from proxy.checks.pipeline import Admitted, Seen
from proxy.dataplane.facts import ConnectionFacts
from proxy.dataplane.faults import UpstreamFault
from proxy.dataplane.flow import Flow
from proxy.dataplane.http1 import (
    CONTINUE,
    LAST_CHUNK,
    RequestHead,
    chunk,
    error_response,
    response_head,
    upstream_head,
)
from proxy.dataplane.plane import Plane
from proxy.dataplane.ports import ClientSide, UpstreamSide
from proxy.errors import AuthError, Reason
from proxy.headers import identity_headers, kept_request_headers, kept_response_headers

log = logging.getLogger("certbound.dataplane")

# Body bytes held while the checks run or a connection is made, before reading pauses.
MAX_PENDING_BODY = 256 * 1024
# RFC 9110 §9.2.2: only these may be sent again after a connection failed under them (and
# only when no body byte could have been consumed). POST and PATCH never are.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# How the response body reaches the client.
_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class Exchange:
    __slots__ = (
        "_close_after",
        "_ends_with_close",
        "_holds_upload",
        "_is_buffering",
        "_relay",
        "_retried",
        "_sent_at",
        "_task",
        "admitted",
        "body_sent",
        "client",
        "facts",
        "flow",
        "head",
        "is_finished",
        "is_request_done",
        "pending",
        "pending_bytes",
        "plane",
        "seen",
        "started",
        "status",
        "upstream",
    )

    def __init__(
        self,
        head: RequestHead,
        client: ClientSide,
        flow: Flow,
        facts: ConnectionFacts,
        plane: Plane,
    ) -> None:
        self.head = head
        self.client = client
        self.flow = flow
        self.facts = facts
        self.plane = plane
        self.started = time.perf_counter()
        self.seen = Seen()
        self.admitted: Admitted | None = None
        self.upstream: UpstreamSide | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.body_sent = 0
        self.is_request_done = False
        self.is_finished = False
        self.status = 0  # of the final response head sent to the client; 0 = none yet
        self._relay = _NO_BODY
        self._close_after = False
        self._ends_with_close = False
        self._retried = False
        self._is_buffering = False  # reading the body before taking an upstream connection
        self._holds_upload = False  # one of the pool's upload slots (a body still arriving)
        self._sent_at = 0.0
        self._task: asyncio.Task[Any] | None = None

    # -- the checks ----------------------------------------------------------------------

    def start(self) -> None:
        self.plane.request_started()
        self._check()

    def _check(self) -> None:
        # tls.ocsp: one attribute check once the connection's answer is known (None).
        if self.facts.ocsp is not None and not self._revocation_settled():
            return
        try:
            decision = self.plane.pipeline.admit(
                self.head.request, self.facts.identity, self.seen, self.facts.memo
            )
        except AuthError as refusal:
            self.refuse(refusal)
            return
        if isinstance(decision, Admitted):
            self._admitted(decision)
        else:
            self._run(decision, self._decided)

    def _revocation_settled(self) -> bool:
        """The connection's OCSP answer: True to go on; False when this request was refused,
        or waits for the answer (only this connection's requests, only until it comes)."""
        answer = self.facts.ocsp
        if isinstance(answer, asyncio.Task):
            if not answer.done():
                answer.add_done_callback(self._ocsp_answered)
                return False
            if answer.cancelled() or answer.exception() is not None:
                answer = AuthError.internal()
            else:
                answer = answer.result()
            self.facts.ocsp = answer
        if answer is None:
            return True
        self.seen.identity = self.facts.identity
        self.refuse(answer)
        return False

    def _ocsp_answered(self, _: asyncio.Task[AuthError | None]) -> None:
        if not self.is_finished:
            self._check()

    def _run(self, work: Coroutine[Any, Any, Any], then: Any) -> None:
        self._task = asyncio.get_running_loop().create_task(work)
        self._task.add_done_callback(then)

    def _decided(self, task: asyncio.Task[Admitted]) -> None:
        self._task = None
        if self.is_finished or task.cancelled():
            return
        error = task.exception()
        if isinstance(error, AuthError):
            self.refuse(error)
        elif error is not None:
            self.internal_error(error)
        else:
            self._admitted(task.result())

    def refuse(self, refusal: AuthError) -> None:
        """Answer a refusal. A body still on its way is never read: the connection closes."""
        self.plane.pipeline.refused(self.head.request, refusal, self.seen)
        self._answer(refusal)

    def answer_broken(self, refusal: AuthError) -> None:
        """The framing step refused this request's body (counted there): answer, or cut."""
        self._answer(refusal)

    def internal_error(self, error: BaseException) -> None:
        log.error("internal error on the request path", exc_info=error)
        self._answer(AuthError.internal())

    def _answer(self, error: AuthError) -> None:
        body_pending = self.head.has_body and not self.is_request_done
        close = body_pending or not self.head.keep_alive or self.plane.draining
        if self.status == 0:
            self.status = error.refusal.status
            self.client.write(error_response(error, close=close))
            self._finish(close)
        else:
            self._finish(close=True, abort=True)

    # -- the request ---------------------------------------------------------------------

    def _admitted(self, admitted: Admitted) -> None:
        self.admitted = admitted
        if self.head.expects_continue and not self.is_request_done:
            self.client.write(CONTINUE)
        if (
            self.head.has_body
            and not self.is_request_done
            and self.pending_bytes < self.plane.request_buffer_bytes
            and not self.plane.bodies.is_full
        ):
            # nginx's proxy_request_buffering: a slow upload costs no pool connection until
            # its body is here (or outgrew the buffer).
            self._is_buffering = True
            self.flow.resume_reading("pending")  # held back while the checks ran
            return
        self._take_upstream()

    def _take_upstream(self) -> None:
        self._is_buffering = False
        if self.head.has_body and not self.is_request_done:
            # The body streams: one of the pool's upload slots, waited for in turn.
            self._run(self._upstream_for_upload(), self._connected)
            return
        upstream = self.plane.pool.take_idle()
        if upstream is not None:
            self._attach(upstream, reused=True)
        else:
            self._run(self.plane.pool.connect(), self._connected)

    async def _upstream_for_upload(self) -> UpstreamSide:
        pool = self.plane.pool
        await pool.upload_slot()
        self._holds_upload = True
        return await pool.connect()

    def _end_upload(self) -> None:
        if self._holds_upload:
            self._holds_upload = False
            self.plane.pool.upload_finished()

    def _connected(self, task: asyncio.Task[UpstreamSide]) -> None:
        self._task = None
        if task.cancelled():
            return
        error = task.exception()
        if self.is_finished:
            if error is None:
                task.result().finish()
            return
        if isinstance(error, UpstreamFault):
            self.upstream_failed(error)
        elif error is not None:
            self.internal_error(error)
        else:
            self._attach(task.result(), reused=False)

    def _attach(self, upstream: UpstreamSide, *, reused: bool) -> None:
        admitted = self.admitted
        assert admitted is not None
        head, plane = self.head, self.plane
        self.upstream = upstream
        upstream.begin(self, self.flow, skip_body=head.request.method == "HEAD")
        self.flow.pair(upstream)
        if not reused:
            self._retried = True  # a fresh connection that fails is a real fault
        # Kept-alive clients send the same token on every request: the cached claims are the
        # very same object, so its header lines are rendered once per connection.
        memo = self.facts.added_headers
        if (
            memo is not None
            and memo[0] is admitted.claims
            and memo[1] is admitted.identity
            and memo[2] == admitted.binding
            and memo[3] == head.host
        ):
            added = memo[4]
        else:
            added = identity_headers(
                admitted.identity,
                admitted.claims,
                binding=admitted.binding,
                remote=head.request.remote,
                host=head.host,
                client_cert_header=plane.client_cert_header,
            )
            self.facts.added_headers = (
                admitted.claims,
                admitted.identity,
                admitted.binding,
                head.host,
                added,
            )
        kept = kept_request_headers(
            head.request.headers,
            head.request.lower_names,
            head.connection_named,
            plane.dropped_request_headers,
        )
        parts = [
            upstream_head(
                head, plane.pool.base_path + admitted.target, kept, added, plane.pool.authority
            )
        ]
        if self.pending:
            parts.extend([chunk(p) for p in self.pending] if head.is_chunked else self.pending)
            self.body_sent += self.pending_bytes
            self.plane.bodies.release(self.pending_bytes)
            self.pending, self.pending_bytes = [], 0
            self.flow.resume_reading("pending")
        if self.is_request_done and head.is_chunked:
            parts.append(LAST_CHUNK)
        self._sent_at = time.perf_counter()
        upstream.write(b"".join(parts))
        if self.is_request_done:
            upstream.await_response()

    def request_body(self, data: bytes) -> None:
        if self.is_finished:
            return
        upstream = self.upstream
        if upstream is None:
            self.pending.append(data)
            self.pending_bytes += len(data)
            bodies = self.plane.bodies
            bodies.hold(len(data))
            if self._is_buffering:
                if self.pending_bytes < self.plane.request_buffer_bytes and not bodies.is_full:
                    return
                # Outgrew its buffer, or the worker's bodies fill their share of the memory
                # budget: it streams, taking its turn for an upload slot.
                self._take_upstream()
            if self.pending_bytes > MAX_PENDING_BODY or bodies.is_full:
                # Resumed once what it holds went upstream (or it ends).
                self.flow.pause_reading("pending")
            return
        upstream.write(chunk(data) if self.head.is_chunked else data)
        self.body_sent += len(data)

    def request_complete(self) -> None:
        self.is_request_done = True
        self._end_upload()
        if self._is_buffering and not self.is_finished:
            self._take_upstream()
            return
        upstream = self.upstream
        if self.is_finished or upstream is None:
            return
        if self.head.is_chunked:
            upstream.write(LAST_CHUNK)
        upstream.await_response()

    # -- the response --------------------------------------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        head, client = self.head, self.client
        if status < 200 and status != 101:
            if status != 100 and head.version == "1.1":  # 103 Early Hints and the like
                client.write(response_head(status, reason, kept_response_headers(headers)[0], b""))
            return
        if status == 101 and head.upgrade is None:
            self.upstream_failed(UpstreamFault("reset"), invalid=True)
            return
        kept, length, is_framed = kept_response_headers(headers)
        self._ends_with_close = not is_framed
        method = head.request.method
        if status == 101:
            self._relay = _NO_BODY
            extra = b"Connection: upgrade\r\nUpgrade: " + head.upgrade + b"\r\n"  # type: ignore[operator]
        elif method == "HEAD" or status in (204, 304):
            self._relay = _NO_BODY
            extra = b"Content-Length: " + length + b"\r\n" if length and status != 204 else b""
        elif length is not None:
            self._relay = _LENGTH
            extra = b"Content-Length: " + length + b"\r\n"
        elif head.version == "1.1":
            self._relay = _CHUNKED
            extra = b"Transfer-Encoding: chunked\r\n"
        else:
            self._relay = _UNTIL_CLOSE
            extra = b""
        close = status != 101 and (
            not head.keep_alive
            or self.plane.draining
            or self._relay == _UNTIL_CLOSE
            or (head.has_body and not self.is_request_done)
        )
        self._close_after = close
        if close:
            extra += b"Connection: close\r\n"
        elif head.version == "1.0":
            extra += b"Connection: keep-alive\r\n"
        admitted = self.admitted
        if admitted is not None and admitted.dpop_nonce is not None:
            # RFC 9449 §8.2: the client's nonce aged; the next proof should carry this one.
            extra += b"DPoP-Nonce: " + admitted.dpop_nonce.encode("ascii") + b"\r\n"
        self.status = status
        client.write(response_head(status, reason, kept, extra))
        now = time.perf_counter()
        metrics.UPSTREAM_DURATION.observe(now - self._sent_at)
        metrics.OVERHEAD.observe(self._sent_at - self.started)

    def response_body(self, data: bytes) -> None:
        if self._relay == _CHUNKED:
            self.client.write(chunk(data))
        elif self._relay != _NO_BODY:
            self.client.write(data)

    def response_complete(self) -> None:
        if self.is_finished:
            return
        if self._relay == _CHUNKED:
            self.client.write(LAST_CHUNK)
        assert self.admitted is not None
        self.plane.pipeline.forwarded(self.head.request, self.admitted, self.seen, self.status)
        upstream, self.upstream = self.upstream, None
        self.flow.pair(None)
        if upstream is not None:
            if not self.is_request_done:
                upstream.is_reusable = False  # the rest of the body would follow
            upstream.finish()
        self._finish(self._close_after or not self.is_request_done)

    # -- upgrades ------------------------------------------------------------------------

    def upstream_upgraded(self, rest: bytes) -> None:
        """The workload switched protocols (101 relayed): the two sides are wired to each
        other, bytes flow both ways without this exchange, which is finished."""
        upstream, self.upstream = self.upstream, None
        assert upstream is not None and self.admitted is not None
        self.plane.pipeline.forwarded(self.head.request, self.admitted, self.seen, 101)
        self.plane.request_finished()
        self.is_finished = True
        upstream.wire(self.client)
        self.client.upgraded(upstream, rest)

    # -- writing to the client (the upstream corks a burst of response callbacks) ------------

    def cork(self) -> None:
        self.client.cork()

    def uncork(self) -> None:
        self.client.uncork()

    # -- faults --------------------------------------------------------------------------

    def upstream_lost(self, upstream: UpstreamSide) -> None:
        if self.is_finished:
            return
        if self.status == 0:
            if (
                not self._retried
                and not upstream.has_response_bytes
                and self.body_sent == 0
                and self.head.request.method in IDEMPOTENT_METHODS
                and self.admitted is not None
            ):
                # A kept-alive connection the workload closed as we wrote: once more, over a
                # fresh connection (another pooled one may be just as stale).
                self._retried = True
                self.upstream = None
                self.flow.pair(None)
                self._run(self.plane.pool.connect(fresh=True), self._connected)
                return
            self.upstream_failed(UpstreamFault("reset"))
        elif self._ends_with_close:  # the workload framed its answer by closing
            self.response_complete()
        else:
            self.upstream_failed(UpstreamFault("reset"))

    def upstream_failed(self, fault: UpstreamFault, *, invalid: bool = False) -> None:
        if self.is_finished:
            return
        upstream, self.upstream = self.upstream, None
        self.flow.pair(None)
        if upstream is not None:
            upstream.close()
        error = fault.count()
        if invalid or fault.kind == "reset":
            log.warning(
                "upstream %s: %s",
                "sent an invalid response" if invalid else "closed the connection",
                "before answering" if self.status == 0 else "mid-response",
            )
        if self.status == 0:
            self.plane.pipeline.upstream_failed(self.head.request, error, self.seen)
            self._answer(error)
        else:
            # The status line is gone already; cut the connection so the client sees a
            # truncated response instead of a complete-looking short one.
            self._finish(close=True, abort=True)

    def body_timed_out(self) -> None:
        """No request body byte for listen.body_timeout_seconds: 408, the upstream freed."""
        if self.is_finished:
            return
        if self.upstream is not None:
            metrics.UPSTREAM_ERRORS.labels(kind="body_timeout").inc()
        seconds = self.plane.body_timeout
        self.refuse(
            AuthError(
                Reason.BODY_TIMEOUT,
                f"no request body byte for {seconds:g} s (listen.body_timeout_seconds)",
            )
        )

    def client_lost(self) -> None:
        """The client went away mid-exchange: drop the upstream side too."""
        if self._task is not None:
            self._task.cancel()
        self._end_upload()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
            self.flow.pair(None)
        if not self.is_finished:
            self.is_finished = True
            self.plane.request_finished()

    def _finish(self, close: bool, abort: bool = False) -> None:
        if self.is_finished:
            return
        self.is_finished = True
        if self.pending_bytes:
            self.plane.bodies.release(self.pending_bytes)
            self.pending, self.pending_bytes = [], 0
        if self._task is not None:
            self._task.cancel()  # a connection still being waited for is not needed now
        self._end_upload()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
            self.flow.pair(None)
        self.plane.request_finished()
        self.client.exchange_finished(self, close=close, abort=abort)

"""The mTLS listener: one handshake per connection done by us (so failed handshakes are
counted and the client identity is read once), a cap on open connections, and aiohttp's
connection handler with an RFC 6750 answer for requests it cannot parse."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy import metrics
from proxy.errors import AuthError, Outcome, Reason, error_response
from proxy.identity import ClientIdentity, identity_from_der

log = logging.getLogger("certbound.listener")

HANDSHAKE_TIMEOUT = 10.0


class _MTLSConnection(asyncio.Protocol):
    """One client connection: plain TCP, upgraded with `loop.start_tls`, then handed to
    aiohttp's protocol. Doing the handshake ourselves lets us count failed handshakes
    (asyncio's own server hides them) and read the client identity once per connection."""

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        identities: dict[object, ClientIdentity],
        limit: ConnectionLimit,
    ) -> None:
        self._make_handler = make_handler
        self._context = context
        self._identities = identities
        self._limit = limit
        self._counted = False
        self._handler: asyncio.Protocol | None = None
        self._pending: list[bytes] = []
        self._upgrade: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._limit.open >= self._limit.maximum:
            # Over the cap: close before spending a handshake on it.
            metrics.CONNECTIONS_REFUSED.inc()
            transport.abort()
            return
        self._limit.open += 1
        self._counted = True
        # Hold the ClientHello in the kernel until start_tls has installed the TLS layer.
        transport.pause_reading()
        self._upgrade = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                raw, self, self._context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            metrics.TLS_HANDSHAKE_FAILURES.inc()
            log.debug(
                "TLS handshake failed: %s", getattr(exc, "reason", None) or type(exc).__name__
            )
            raw.abort()
            return
        if tls is None or tls.is_closing():
            metrics.TLS_HANDSHAKE_FAILURES.inc()
            return
        ssl_object = tls.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        handler = self._make_handler()
        if der:
            self._identities[handler] = identity_from_der(der)
        metrics.OPEN_CONNECTIONS.inc()
        self._handler = handler
        handler.connection_made(tls)
        for data in self._pending:
            handler.data_received(data)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        # TLS may deliver the first request before start_tls has returned to us.
        if self._handler is None:
            self._pending.append(data)
        else:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._limit.open -= 1
            self._counted = False
        if self._handler is None:
            if self._upgrade is not None:
                self._upgrade.cancel()
            return
        metrics.OPEN_CONNECTIONS.dec()
        self._identities.pop(self._handler, None)
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


class _DataRequestHandler(RequestHandler):
    """aiohttp's connection handler with one change: a request that is not valid HTTP/1.1 gets
    the RFC 6750 invalid_request answer. aiohttp's own 400 quotes the offending bytes, which
    can be the Authorization header, in the response body and in an ERROR log traceback."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        # The exception text quotes request bytes: log only its type.
        log.info("malformed HTTP request from %s: %s", request.remote, type(exc).__name__)
        metrics.count(Outcome.REJECTED, Reason.MALFORMED_REQUEST)
        response = error_response(AuthError.malformed("the request is not valid HTTP/1.1"))
        response.force_close()
        return response


@dataclass
class ConnectionLimit:
    """Open connections on one listener (handshakes included) against listen.max_connections."""

    maximum: int
    open: int = 0


class MTLSSite(web.BaseSite):
    """aiohttp's TCPSite, but each connection does its own TLS handshake (_MTLSConnection)."""

    __slots__ = ("_host", "_identities", "_limit", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        identities: dict[object, ClientIdentity],
        limit: ConnectionLimit,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self._identities = identities
        self._limit = limit
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        context = self._ssl_context
        assert context is not None
        loop = asyncio.get_running_loop()
        # What web.Server() would build, with our handle_error (aiohttp has no public hook).
        make_handler = functools.partial(_DataRequestHandler, server, loop=loop, **server._kwargs)
        self._server = await loop.create_server(
            lambda: _MTLSConnection(make_handler, context, self._identities, self._limit),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )


def bound_port(site: web.BaseSite) -> int:
    """The port a started site listens on (port 0 asks the kernel for a free one)."""
    server = site._server  # aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None) or ()
    return int(sockets[0].getsockname()[1]) if sockets else 0

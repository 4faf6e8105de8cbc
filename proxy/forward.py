"""Stream a checked request to the upstream and its response back. Header hygiene lives here.

Bodies are streamed in both directions (never buffered whole), over a keep-alive pool.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy import metrics
from proxy.config import UpstreamSettings
from proxy.errors import AuthError, Reason
from proxy.identity import ClientIdentity
from proxy.tokens.jwt import TokenClaims

log = logging.getLogger("certbound.forward")

# RFC 9110 §7.6.1 plus the old Keep-Alive/Proxy-Connection ones.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Whatever the client sends under these names is a forgery: only the proxy may set them.
SPOOFABLE = frozenset(
    {
        "client-cert",
        "client-cert-chain",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-client-cert",
        "x-real-ip",
    }
)
IDENTITY_PREFIX = "x-certbound-"
CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024


def connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", []):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def _header_value(value: str) -> str:
    # Claims are attacker-influenced text; never let CR/LF or non-ASCII reach a header line.
    if value.isascii() and value.isprintable() and "%" not in value:
        return value  # the common case, and what quote() would return anyway
    return quote(value, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    identity: ClientIdentity,
    claims: TokenClaims | None,
    *,
    binding: str,
    remote: str,
    client_cert_header: bool,
) -> CIMultiDict[str]:
    named = connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in named
            or lower in SPOOFABLE
            or lower.startswith(IDENTITY_PREFIX)
        ):
            continue
        out.add(name, value)
    # Added after the Connection-named headers were dropped, so `Connection: X-Certbound-*`
    # cannot remove them; any client copy was dropped above, so none can be forged.
    out["X-Forwarded-For"] = remote
    out["X-Forwarded-Proto"] = "https"
    if "Host" in incoming:
        out["X-Forwarded-Host"] = incoming["Host"]
    if claims is not None:
        out["X-Certbound-Subject"] = _header_value(claims.subject)
        out["X-Certbound-Client-Id"] = _header_value(claims.client_id)
        out["X-Certbound-Scope"] = _header_value(claims.scope)
    out["X-Certbound-Thumbprint"] = identity.thumbprint
    # bound | unbound (allowed by the route) | report_only_failed | none (public route)
    out["X-Certbound-Binding"] = binding
    if client_cert_header:
        # RFC 9440 §2.2: a structured-field byte sequence of the DER certificate.
        out["Client-Cert"] = ":" + base64.b64encode(identity.der).decode("ascii") + ":"
    return out


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    named = connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower == "content-length":
            continue
        out.add(name, value)
    return out


def upstream_fault(exc: BaseException) -> AuthError:
    """Count a failed upstream exchange by kind and say what the client gets: 504 for a
    timeout (aiohttp's read and connect timeouts are TimeoutErrors too), 502 otherwise."""
    if isinstance(exc, TimeoutError):
        metrics.UPSTREAM_ERRORS.labels(kind="timeout").inc()
        return AuthError(Reason.UPSTREAM_TIMEOUT, "upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        metrics.UPSTREAM_ERRORS.labels(kind="connect").inc()
        return AuthError(Reason.UPSTREAM_CONNECT, "upstream is unreachable")
    metrics.UPSTREAM_ERRORS.labels(kind="reset").inc()
    return AuthError(Reason.UPSTREAM_RESET, "upstream closed the connection")


class Forwarder:
    def __init__(self, settings: UpstreamSettings) -> None:
        self._base = settings.url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_seconds,
            sock_read=settings.timeout_seconds,
        )
        self._max_connections = settings.max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=30, enable_cleanup_closed=True
        )
        # auto_decompress off: bytes go through as the upstream sent them.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(
        self,
        request: web.Request,
        headers: CIMultiDict[str],
        *,
        target: str,
        started: float,
        body: bytes | None = None,
    ) -> web.StreamResponse:
        """Send upstream; returns the streamed response. Raises AuthError for upstream faults
        that happen before the response started (502/504)."""
        assert self._session is not None
        # `target` is the client's request-target as sent, or its normalised form when a route
        # policy matched on that; never re-encoded by a URL library.
        url = URL(self._base + target, encoded=True)  # encoded: yarl would resolve ../
        data: bytes | AsyncIterator[bytes] | None = body
        if body is None and request.body_exists:
            data = _stream(request)
        sent = time.perf_counter()
        overhead = sent - started
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
                auto_decompress=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            fault = upstream_fault(exc)
            if fault.reason is Reason.UPSTREAM_RESET:
                log.warning("upstream exchange failed: %s", type(exc).__name__)
            raise fault from None
        headers_at = time.perf_counter()
        metrics.UPSTREAM_DURATION.observe(headers_at - sent)
        try:
            length = upstream.content_length
            if length is not None and length <= SMALL_BODY and request.method != "HEAD":
                return await self._small(upstream, length, overhead, headers_at)
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=response_headers(upstream.headers),
            )
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            metrics.OVERHEAD.observe(overhead + time.perf_counter() - headers_at)
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                upstream_fault(exc)
                log.warning("upstream failed mid-response: %s", type(exc).__name__)
                # The status line is gone already; cut the connection so the client sees a
                # truncated response instead of a complete-looking short one.
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError from None
            await response.write_eof()
            return response
        finally:
            upstream.release()

    async def _small(
        self, upstream: aiohttp.ClientResponse, length: int, overhead: float, headers_at: float
    ) -> web.Response:
        """A small body of known length is read whole and sent with the headers in one write:
        half the TLS records, and a short upstream body becomes a clean 502, not a cut-off."""
        try:
            body = await upstream.content.readexactly(length)
        except (asyncio.IncompleteReadError, TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise upstream_fault(exc) from None
        response = web.Response(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream.headers),
            body=body,
        )
        metrics.OVERHEAD.observe(overhead + time.perf_counter() - headers_at)
        return response


async def _stream(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk

"""HTTP/1.1 semantics of the data plane, byte for byte over real TLS: bodiless answers,
Expect: 100-continue, pipelining in order, HTTP/1.0 clients and workloads, keep-alive reuse
of upstream connections, and a client that goes away mid-response."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import replace

import pytest

from tests.support.rawhttp import RawResponse, bearer_request, raw_exchange
from tests.support.stack import (
    PKI,
    Issuer,
    Running,
    StartProxy,
    Upstream,
    make_settings,
    thumbprint,
)

pytestmark = pytest.mark.e2e


async def send(running: Running, payload: bytes | list[bytes], **kw: float) -> RawResponse:
    return await raw_exchange(
        running.proxy.data_port, running.client_ssl("alice"), payload, timeout=3, **kw
    )


async def test_head_204_and_304_answers_have_no_body_and_keep_the_connection(
    running: Running,
) -> None:
    token = running.issuer.mint(running.pki.alice)
    payload = (
        bearer_request(token, "HEAD", "/orders")
        + bearer_request(token, "GET", "/status/204")
        + bearer_request(token, "GET", "/status/304")
        + bearer_request(token, "GET", "/last", "Connection: close\r\n")
    )
    response = await send(running, payload)
    raw = response.raw
    assert raw.count(b"HTTP/1.1 ") == 4, raw
    first, rest = raw.split(b"HTTP/1.1 204", 1)
    assert b"Content-Length: " in first  # HEAD keeps the workload's length of the entity
    assert first.endswith(b"\r\n\r\n")  # ... and no body follows
    no_content, rest = rest.split(b"HTTP/1.1 304", 1)
    assert no_content.endswith(b"\r\n\r\n") and b"Content-Length" not in no_content
    not_modified, last = rest.split(b"HTTP/1.1 200", 1)
    assert not_modified.endswith(b"\r\n\r\n")
    assert b'"path": "/last"' in last
    assert [s.path for s in running.upstream.seen] == [
        "/orders",
        "/status/204",
        "/status/304",
        "/last",
    ]


async def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    paths = [f"/p{i}" for i in range(8)]
    payload = b"".join(bearer_request(token, path=p) for p in paths[:-1])
    payload += bearer_request(token, path=paths[-1], extra="Connection: close\r\n")
    response = await send(running, payload)
    answered = [p for p in paths if f'"path": "{p}"'.encode() in response.raw]
    assert answered == paths
    order = [response.raw.index(f'"path": "{p}"'.encode()) for p in paths]
    assert order == sorted(order)


async def test_refused_request_with_expect_100_continue_is_answered_before_its_body(
    running: Running,
) -> None:
    head = (
        b"POST /orders HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    # Only the head is sent: the answer must come without waiting for a byte of the body.
    response = await send(running, head)
    assert response.status == 401, response.raw
    assert b"100 Continue" not in response.raw
    assert response.header("Connection") == "close"
    assert running.upstream.seen == []


@pytest.mark.slow
async def test_admitted_request_with_expect_100_continue_gets_100_then_the_answer(
    running: Running,
) -> None:
    token = running.issuer.mint(running.pki.alice)
    head = bearer_request(
        token,
        "POST",
        "/upload",
        "Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n",
    )
    response = await send(running, [head, b"hello"], pause=0.3)
    assert response.raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    seen = running.upstream.seen[0]
    assert seen.body_bytes == 5 and "expect" not in seen.headers


async def test_http10_client_without_host_is_served_and_closed(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    payload = f"GET /old HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    response = await send(running, payload)
    assert response.raw.startswith(b"HTTP/1.1 200")
    assert response.header("Connection") == "close"
    head = response.raw.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\r\nconnection:") == 1  # close, and never keep-alive beside it
    seen = running.upstream.seen[0]
    assert seen.headers["host"] == [running.upstream.url.removeprefix("http://")]


async def test_chunked_response_is_relayed_chunked_and_close_delimited_to_http10(
    running: Running,
) -> None:
    token = running.issuer.mint(running.pki.alice)
    chunked = await send(
        running, bearer_request(token, path="/stream?chunks=3", extra="Connection: close\r\n")
    )
    assert chunked.header("Transfer-Encoding") == "chunked"
    assert chunked.body.endswith(b"0\r\n\r\n")
    old = f"GET /stream?chunks=3 HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    plain = await send(running, old)
    assert plain.header("Transfer-Encoding") is None
    assert plain.body == b"x" * 3072  # framed by the close, as HTTP/1.0 has it


async def test_upstream_connections_are_kept_alive_and_reused(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    for _ in range(5):
        assert (await running.request(token=token))[0] == 200
    pool = running.proxy.plane.pool
    assert len(pool._open) == 1  # five requests, one upstream connection


async def test_client_gone_mid_response_frees_the_exchange(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        running.proxy.data_port,
        ssl=running.client_ssl("alice"),
        server_hostname="localhost",
    )
    writer.write(bearer_request(token, path="/stream?chunks=200&pause=0.01"))
    await reader.read(100)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert running.proxy.plane.in_flight == 0
    assert (await running.request(token=token))[0] == 200


async def test_upstream_http10_close_delimited_answer_is_relayed_whole(
    running: Running,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 5000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = running.proxy.plane.pool
    real, pool.port = pool.port, server.sockets[0].getsockname()[1]
    try:
        token = running.issuer.mint(running.pki.alice)
        status, _, body = await running.request(token=token)
        assert status == 200 and body == b"z" * 5000
    finally:
        pool.port = real
        server.close()


def _two_connections(port: int, ctx: ssl.SSLContext, token: str) -> tuple[bool, list[bytes]]:
    """Two TLS connections, the second offering the first's session; (resumed?, answers)."""
    answers, session = [], None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(bearer_request(token, extra="Connection: close\r\n"))
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                answers.append(answer)
                resumed, session = tls.session_reused, tls.session
    return resumed, answers


@pytest.mark.parametrize("tickets", [0, 1])
async def test_session_resumption_follows_tls_session_tickets_and_keeps_the_identity(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream, tickets: int
) -> None:
    tls = replace(make_settings(pki, issuer, upstream).tls, session_tickets=tickets)
    running = await start_proxy(tls=tls)
    token = issuer.mint(pki.alice)
    ctx = running.client_ssl("alice")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    resumed, answers = await asyncio.to_thread(
        _two_connections, running.proxy.data_port, ctx, token
    )
    assert resumed is (tickets > 0)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    # A resumed session still carries the client certificate: the binding holds.
    assert [s.headers["x-certbound-thumbprint"] for s in upstream.seen] == [
        [thumbprint(pki.alice)]
    ] * 2


async def test_a_flood_of_pipelined_refusals_is_answered_in_order_without_recursion(
    running: Running,
) -> None:
    """500 requests without a token in one write: each refused in turn (the next one starts
    from the loop, not from inside the previous answer), and the connection stays usable."""
    token = running.issuer.mint(running.pki.alice)
    flood = b"GET /no-token HTTP/1.1\r\nHost: localhost\r\n\r\n" * 500
    response = await send(running, flood + bearer_request(token, extra="Connection: close\r\n"))
    assert response.raw.count(b"HTTP/1.1 401 ") == 500
    assert response.raw.rindex(b"HTTP/1.1 200 ") > response.raw.rindex(b"HTTP/1.1 401 ")
    assert [s.path for s in running.upstream.seen] == ["/orders"]


@pytest.mark.parametrize(
    "body",
    [b"FFFFFFFFFFFFFFFFFFFF\r\n", b"3\r\nabcXX\r\n0\r\n\r\n", b"-1\r\n"],
    ids=["chunk-size-overflow", "chunk-without-crlf", "negative-chunk-size"],
)
async def test_malformed_chunked_body_is_400_and_the_upstream_request_is_cut(
    running: Running, body: bytes
) -> None:
    token = running.issuer.mint(running.pki.alice)
    head = bearer_request(token, "POST", "/upload", "Transfer-Encoding: chunked\r\n")
    response = await send(running, head + body)
    # The head had passed the checks and gone upstream; the body breaks the framing: 400 to
    # the client, and the upstream request is cut (the workload never sees a whole request).
    assert response.status == 400, response.raw[:200]
    assert b"not valid HTTP/1.1" in response.body
    await asyncio.sleep(0.2)
    assert running.upstream.seen == []
    assert (await running.request(token=token))[0] == 200  # the proxy keeps serving

"""Each timeout of a client connection, a millisecond before and after its deadline, on a
loop whose clock the test advances: handshake, idle keep-alive, slow head, send, body and
tunnel idle. Milliseconds of real time each; the same cases end to end wait seconds (slow)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from proxy.dataplane.deadline import STALL_GRACE
from tests.support.connection_driver import (
    BODY,
    HANDSHAKE,
    IDLE,
    JUST,
    SEND,
    UPGRADE_IDLE,
    Certificates,
    Client,
    TunnelEnd,
    run,
)


def handshake_timeouts() -> float:
    sample = REGISTRY.get_sample_value(
        "certbound_tls_handshake_failures_total", {"reason": "timeout"}
    )
    return sample or 0.0


@pytest.fixture
def counted_handshake_timeouts() -> Iterator[Callable[[], float]]:
    before = handshake_timeouts()
    yield lambda: handshake_timeouts() - before


def test_an_unfinished_handshake_is_aborted_and_counted_at_the_handshake_timeout(
    certificates: Certificates, counted_handshake_timeouts: Callable[[], float]
) -> None:
    async def scenario(client: Client) -> None:
        client.hello()
        await client.advance(HANDSHAKE - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.transport.aborted
        assert counted_handshake_timeouts() == 1

    run(certificates, scenario)


def test_a_finished_handshake_leaves_the_handshake_timeout_behind(
    certificates: Certificates, counted_handshake_timeouts: Callable[[], float]
) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        await client.advance(HANDSHAKE + 1.0)
        assert not client.transport.is_closing()
        assert counted_handshake_timeouts() == 0

    run(certificates, scenario)


def test_an_idle_connection_is_closed_with_close_notify_at_the_idle_timeout(
    certificates: Certificates,
) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        await client.advance(IDLE - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.transport.closed and not client.transport.aborted
        client.incoming.write(client.transport.take())
        assert client.tls.read(1) == b""  # close_notify: a clean end, not a cut

    run(certificates, scenario)


def test_bytes_from_the_client_move_the_idle_deadline(certificates: Certificates) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        await client.advance(IDLE / 2)
        client.send(b"\r\n")  # an empty line between requests is allowed, and is activity
        await client.advance(IDLE / 2 + 1.0)
        assert not client.transport.is_closing()
        await client.advance(IDLE / 2 - 1.0 - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.transport.closed

    run(certificates, scenario)


def test_a_slowloris_head_is_closed_one_idle_timeout_after_its_first_byte(
    certificates: Certificates,
) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        client.send(b"GET / HTTP/1.1\r\n")
        spent = 0.0
        while spent < IDLE - 10.0:  # a header line every 9 s: never idle, never done
            await client.advance(9.0)
            spent += 9.0
            client.send(b"X-Drip: a\r\n")
        await client.advance(IDLE - spent - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.transport.closed

    run(certificates, scenario)


def test_a_client_that_reads_nothing_is_aborted_at_the_send_timeout(
    certificates: Certificates,
) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        client.transport.buffered = 1 << 20
        client.conn.pause_writing()  # as the loop's transport does past its high-water mark
        await client.advance(SEND - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.transport.aborted  # close would wait on a buffer that never drains

    run(certificates, scenario)


def test_a_send_buffer_that_shrinks_moves_the_send_deadline(certificates: Certificates) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        client.transport.buffered = 1 << 20
        client.conn.pause_writing()
        await client.advance(SEND / 2)
        client.transport.buffered -= 1  # the client read a little: progress
        # Progress is seen at the next check, at most STALL_GRACE later; the deadline
        # counts from there.
        await client.advance(STALL_GRACE)
        deadline = client.loop.now + SEND
        await client.advance(deadline - JUST - client.loop.now)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.transport.aborted

    run(certificates, scenario)


def upload_head(token: str, length: int) -> bytes:
    return (
        f"POST /orders HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_stalled_request_body_is_answered_408_at_the_body_timeout(
    certificates: Certificates,
) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        client.send(upload_head(certificates.token, 100) + b"x" * 10)
        await client.advance(0)  # the checks admit it; the body is buffered, no upstream yet
        assert client.transport.reading and client.answer() == b""
        await client.advance(BODY - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.answer().startswith(b"HTTP/1.1 408 ")
        assert client.transport.closed

    run(certificates, scenario)


def test_each_body_byte_moves_the_body_deadline(certificates: Certificates) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        client.send(upload_head(certificates.token, 100) + b"x" * 10)
        await client.advance(0)
        for _ in range(3):  # a slow upload, never stalled for a whole body timeout
            await client.advance(BODY - 1.0)
            client.send(b"x")
        await client.advance(BODY - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.answer().startswith(b"HTTP/1.1 408 ")

    run(certificates, scenario)


def test_an_upgraded_connection_idle_both_ways_is_closed_at_the_upgrade_idle_timeout(
    certificates: Certificates,
) -> None:
    async def scenario(client: Client) -> None:
        client.handshake()
        end = TunnelEnd()
        # What the exchange does once the workload's 101 is relayed (ports.ClientSide).
        client.conn.upgraded(end, b"")
        await client.advance(UPGRADE_IDLE / 2)
        client.send(b"ping")  # the client speaks: the tunnel is not idle
        assert end.relayed == b"ping"
        await client.advance(UPGRADE_IDLE / 2)
        client.conn.tunnel_write(b"pong")  # the workload speaks
        assert client.answer() == b"pong"
        await client.advance(UPGRADE_IDLE - JUST)
        assert not client.transport.is_closing()
        await client.advance(2 * JUST)
        assert client.transport.closed and end.is_closed

    run(certificates, scenario)

"""The upstream pool on its own, against a real workload on loopback: waiters are served in
the order they came, a newcomer never jumps the queue, and a connect timeout is a 504."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest

from proxy.dataplane.faults import UpstreamFault
from proxy.dataplane.pool import UpstreamPool
from proxy.dataplane.upstream import UpstreamConnection
from proxy.settings import UpstreamSettings
from tests.support.faults import proxy_with, upstream_at
from tests.support.stack import PKI, Issuer, Upstream
from tests.support.workload import Workload

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


async def test_released_connections_go_to_the_waiters_in_the_order_they_came(
    workload: Workload,
) -> None:
    pool = UpstreamPool(UpstreamSettings(url=workload.url, max_connections=1, timeout_seconds=5))
    try:
        held = await pool.connect()
        served: list[int] = []

        async def wait(number: int) -> UpstreamConnection:
            conn = await pool.connect()
            served.append(number)
            return conn

        waiters = []
        for number in range(4):
            waiters.append(asyncio.create_task(wait(number)))
            await asyncio.sleep(0.01)  # queued in this order
        for number in range(4):
            pool.release(held)
            assert pool.take_idle() is None  # handed over, not left for a newcomer
            if number == 0:  # a newcomer arrives now: it queues behind those waiting
                waiters.append(asyncio.create_task(wait(4)))
            held = await asyncio.wait_for(waiters[number], 2)
        pool.release(held)
        await asyncio.wait_for(waiters[4], 2)
        assert served == [0, 1, 2, 3, 4]
        assert workload.connections == 1  # one connection, handed on each time
    finally:
        pool.close()


async def test_a_fresh_connection_is_never_one_from_the_pool(workload: Workload) -> None:
    pool = UpstreamPool(UpstreamSettings(url=workload.url, max_connections=2, timeout_seconds=5))
    try:
        first, second = await pool.connect(), await pool.connect()
        pool.release(first)
        pool.release(second)
        fresh = await pool.connect(fresh=True)  # the pool is full: an idle one makes room
        assert fresh is not first and fresh is not second
        assert (await pool.connect()) in (first, second)  # the other idle one is still there
    finally:
        pool.close()


@contextlib.contextmanager
def unanswering_listener() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, so a connect to it
    neither succeeds nor fails until the connector's own timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for s in (*fillers, listener):
            s.close()


async def test_a_connect_timeout_is_504_as_nginx_answers_it(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    with unanswering_listener() as port:
        await asyncio.sleep(0.2)  # the fillers' handshakes complete into the accept queue
        pool = UpstreamPool(
            UpstreamSettings(url=f"http://127.0.0.1:{port}", connect_timeout_seconds=0.5)
        )
        with pytest.raises(UpstreamFault) as fault:
            await pool.connect()
        assert fault.value.kind == "timeout"
        async with proxy_with(
            pki, issuer, upstream, adjust=upstream_at(f"http://127.0.0.1:{port}")
        ) as r:
            status, _, body = await r.request(token=issuer.mint(pki.alice))
        assert status == 504 and body.startswith(b"504 upstream_timeout:"), body

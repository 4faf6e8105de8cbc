"""Peers that stall, on a real `certbound run` process in front of a workload that misbehaves on
command: clients that never read, bodies that stop, slow uploads, disconnects mid-upload. Each
fault leaves the pool free for a good client beside it, whose failures and p99 are asserted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import ProxyProcess, proxy_process
from tests.support.rawhttp import bearer_request
from tests.support.stack import PKI, Issuer
from tests.support.workload import GoodClient, Workload, open_client, read_status, workload_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BIG = 32 * 1024 * 1024  # more than every buffer between the workload and a client holds


def metric(proc: ProxyProcess, name: str, **labels: str) -> float:
    """The sum of the series that carry these labels, whatever their other labels (a request
    refused before its token named an issuer is counted with issuer="", beside the issuers'
    series that exist at 0 from the start)."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    total = 0.0
    for line in proc.metrics().splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and wanted <= set(series.partition("{")[2][:-1].split(",")):
            total += float(value)
    return total


async def eventually(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def stalled_download(pki: PKI, port: int, token: str) -> asyncio.StreamWriter:
    """Ask for a large answer, then read nothing."""
    _, writer = await open_client(pki, port, receive_buffer=4096)
    writer.write(bearer_request(token, "GET", f"/big?bytes={BIG}"))
    await writer.drain()
    return writer


async def test_a_client_that_stops_reading_is_aborted_after_the_send_timeout_and_its_upstream_freed(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    listen = {"send_timeout_seconds": 1}
    with proxy_process(
        tmp_path, workload_config(pki, issuer, workload, tmp_path, listen=listen)
    ) as proc:
        writer = await stalled_download(pki, proc.port, token)
        await eventually(lambda: workload.paths() == ["/big"])
        asked = time.monotonic()
        errors = "certbound_upstream_errors_total"
        await eventually(lambda: metric(proc, errors, kind="send_timeout") == 1)
        assert time.monotonic() - asked >= 0.9  # not before the send timeout
        await eventually(lambda: workload.cut == 1)  # the workload's connection went too
        writer.close()
        assert "listen.send_timeout_seconds" in proc.output()


async def test_100_stalled_downloads_leave_a_good_clients_p99_under_a_second(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    """The pool's default 100 connections all serve clients that never read; the send
    timeout stays at its default 30 s. A good client still gets its answers."""
    token = issuer.mint(pki.alice)
    config = workload_config(pki, issuer, workload, tmp_path)
    with proxy_process(tmp_path, config) as proc:
        writers = await asyncio.gather(
            *(stalled_download(pki, proc.port, token) for _ in range(100))
        )
        await eventually(lambda: len(workload.paths()) == 100, 20)
        good = GoodClient()
        await good.run(pki, proc.port, token, seconds=4)
        for writer in writers:
            writer.close()
    assert good.failures == []
    assert len(good.latencies) > 20
    assert good.p99 < 1.0, sorted(good.latencies)[-5:]


async def test_a_stalled_request_body_is_408_and_its_upstream_connection_freed(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    sections = {
        "listen": {"body_timeout_seconds": 1, "request_buffer_bytes": 0},  # streamed at once
        "upstream": {"max_connections": 1},
    }
    with proxy_process(
        tmp_path, workload_config(pki, issuer, workload, tmp_path, **sections)
    ) as proc:
        reader, writer = await open_client(pki, proc.port)
        writer.write(bearer_request(token, "POST", "/upload", length=1000) + b"x" * 10)
        await eventually(lambda: workload.paths() == ["/upload"])
        assert await asyncio.wait_for(read_status(reader), 5) == 408
        assert b"listen.body_timeout_seconds" in await asyncio.wait_for(reader.read(), 5)
        writer.close()
        # The one pool connection is free again: a good client is answered.
        good = GoodClient()
        await good.run(pki, proc.port, token, seconds=0.5)
        assert good.failures == [] and good.latencies
        assert metric(proc, "certbound_upstream_errors_total", kind="body_timeout") == 1
        refused = metric(
            proc, "certbound_requests_total", outcome="rejected", reason="body_timeout"
        )
        assert refused == 1


async def test_a_stalled_small_body_is_408_and_never_reaches_the_workload(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    listen = {"body_timeout_seconds": 1}
    with proxy_process(
        tmp_path, workload_config(pki, issuer, workload, tmp_path, listen=listen)
    ) as proc:
        reader, writer = await open_client(pki, proc.port)
        writer.write(bearer_request(token, "POST", "/upload", length=1000) + b"x" * 10)
        assert await asyncio.wait_for(read_status(reader), 5) == 408
        writer.close()
    assert workload.requests == []  # buffered: the workload never saw it


async def slow_upload(pki: PKI, port: int, token: str, size: int) -> None:
    """An upload at 100 bytes a second (10 bytes every 0.1 s)."""
    _, writer = await open_client(pki, port)
    try:
        writer.write(bearer_request(token, "POST", "/upload", length=size))
        for _ in range(size // 10):
            writer.write(b"u" * 10)
            await writer.drain()
            await asyncio.sleep(0.1)
    finally:
        writer.close()


async def test_100_slow_uploads_take_no_pool_connection_and_leave_a_good_clients_p99_under_a_second(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    sections = {"upstream": {"max_connections": 10}}
    with proxy_process(
        tmp_path, workload_config(pki, issuer, workload, tmp_path, **sections)
    ) as proc:
        uploads = [
            asyncio.create_task(slow_upload(pki, proc.port, token, 10_000)) for _ in range(100)
        ]
        await asyncio.sleep(1)
        good = GoodClient()
        await good.run(pki, proc.port, token, seconds=3)
        for task in uploads:
            task.cancel()
        await asyncio.gather(*uploads, return_exceptions=True)
    assert good.failures == []
    assert len(good.latencies) > 20
    assert good.p99 < 1.0, sorted(good.latencies)[-5:]
    assert workload.paths("POST") == []  # still being buffered; no connection taken


async def test_slow_uploads_larger_than_the_buffer_hold_at_most_half_the_pool(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    sections = {"listen": {"request_buffer_bytes": 0}, "upstream": {"max_connections": 10}}
    with proxy_process(
        tmp_path, workload_config(pki, issuer, workload, tmp_path, **sections)
    ) as proc:
        uploads = [
            asyncio.create_task(slow_upload(pki, proc.port, token, 10_000)) for _ in range(30)
        ]
        await eventually(lambda: workload.uploads_now == 5)
        good = GoodClient()
        await good.run(pki, proc.port, token, seconds=3)
        for task in uploads:
            task.cancel()
        await asyncio.gather(*uploads, return_exceptions=True)
    assert workload.uploads_most == 5  # half of upstream.max_connections
    assert good.failures == []
    assert good.p99 < 1.0, sorted(good.latencies)[-5:]


async def test_a_client_that_disconnects_mid_upload_frees_its_pool_connection_at_once(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    sections = {"listen": {"request_buffer_bytes": 0}, "upstream": {"max_connections": 1}}
    with proxy_process(
        tmp_path, workload_config(pki, issuer, workload, tmp_path, **sections)
    ) as proc:
        _, writer = await open_client(pki, proc.port)
        writer.write(bearer_request(token, "POST", "/upload", length=100_000) + b"x" * 1000)
        await eventually(lambda: workload.uploads_now == 1)
        writer.close()  # close_notify and FIN: the body will never be complete
        await eventually(lambda: workload.uploads_now == 0, 2)  # not the 30 s idle timeout
        good = GoodClient()
        await good.run(pki, proc.port, token, seconds=0.5)
    assert good.failures == [] and good.latencies


async def warm(pki: PKI, port: int, token: str, connections: int) -> None:
    """Leave `connections` kept-alive connections to the workload in the pool."""

    async def one() -> None:
        reader, writer = await open_client(pki, port)
        writer.write(bearer_request(token, "GET", "/sleep?s=0.2"))
        assert await read_status(reader) == 200
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


async def answer_to(pki: PKI, port: int, head: bytes) -> int:
    reader, writer = await open_client(pki, port)
    writer.write(head)
    status = await asyncio.wait_for(read_status(reader), 10)
    writer.close()
    return status


@pytest.mark.parametrize(
    ("method", "body"),
    [("POST", b""), ("PATCH", b""), ("PUT", b"data"), ("DELETE", b"x")],
)
async def test_a_request_the_workload_drops_is_sent_once_unless_idempotent_and_bodiless(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path, method: str, body: bytes
) -> None:
    """RFC 9110 §9.2.2: a POST (even body-less) or a request whose body was sent is never
    sent again when the workload drops the kept-alive connection under it: 502, once."""
    token = issuer.mint(pki.alice)
    config = workload_config(pki, issuer, workload, tmp_path)
    with proxy_process(tmp_path, config) as proc:
        await warm(pki, proc.port, token, 3)
        head = bearer_request(token, method, "/drop", length=len(body)) + body
        assert await answer_to(pki, proc.port, head) == 502
    assert workload.paths(method) == ["/drop"]


async def test_a_get_the_workload_drops_is_retried_once_over_a_fresh_connection(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    config = workload_config(pki, issuer, workload, tmp_path)
    with proxy_process(tmp_path, config) as proc:
        await warm(pki, proc.port, token, 3)
        assert workload.connections == 3
        assert await answer_to(pki, proc.port, bearer_request(token, "GET", "/drop")) == 502
    drops = [conn for method, path, conn in workload.requests if path == "/drop"]
    assert len(drops) == 2  # the first try on a pooled connection, and one retry
    assert drops[0] <= 3 and drops[1] == 4  # the retry on a new connection, not a pooled one

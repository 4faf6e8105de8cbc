"""Admitted uploads that each fill a large request buffer (listen.request_buffer_bytes) and then
stop, against a real `certbound run` with a memory budget: without a total per worker they
would hold uploads x buffer bytes (measured: 521 MiB peak for the 256 MiB budget here); with it
the process tree's peak RSS (VmHWM, from /proc) stays under the budget (119 MiB), the uploads
past the total stream through the pool's upload share, and a good client beside them is
answered."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from proxy.capacity import MIB, connection_caps
from proxy.settings import ListenSettings
from tests.support.process import peak_rss, proxy_process
from tests.support.rawhttp import bearer_request
from tests.support.stack import PKI, Issuer
from tests.support.workload import GoodClient, Workload, client_tls, workload_config

pytestmark = pytest.mark.timeout(120)
BUDGET_MIB = 256  # the chart's memory limit
BUFFER = 2 * MIB  # listen.request_buffer_bytes
UPLOADS = 200  # each buffering BUFFER - 1 bytes: 400 MiB without a total, past the budget


def stopping_upload(pki: PKI, port: int, token: str, stop: threading.Event) -> None:
    """A request whose body is one byte short of BUFFER, sent whole into the socket, then
    nothing: it never completes, so certbound buffers it as long as it is let. A blocking
    socket in a thread: sendall returns once the kernel holds every byte."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_tls(pki).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(bearer_request(token, "POST", "/upload", length=BUFFER))
            tls.sendall(b"u" * (BUFFER - 1))
            stop.wait(60)


async def settled_peak(pid: int, limit: int) -> int:
    """certbound's peak RSS once it has stopped growing for two seconds (all it reads is
    read), or as soon as it passes `limit`."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 2.0 and last < limit:
        await asyncio.sleep(0.1)
        if (peak := peak_rss(pid)) != last:
            last, since = peak, time.monotonic()
    return last


async def test_many_buffered_uploads_stay_within_the_memory_budget(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path
) -> None:
    caps = connection_caps(ListenSettings(), 1, BUDGET_MIB * MIB)
    assert UPLOADS < caps.max_connections  # admitted, not refused: the buffers are the cost
    assert UPLOADS * BUFFER > BUDGET_MIB * MIB  # would not fit without a total
    token = issuer.mint(pki.alice)
    sections = {
        "listen": {"memory_budget_mib": BUDGET_MIB, "request_buffer_bytes": BUFFER},
        "upstream": {"max_connections": 10},
    }
    with proxy_process(
        tmp_path, workload_config(pki, issuer, workload, tmp_path, **sections)
    ) as proc:
        stop = threading.Event()
        uploads = [
            threading.Thread(target=stopping_upload, args=(pki, proc.port, token, stop))
            for _ in range(UPLOADS)
        ]
        for thread in uploads:
            thread.start()
        try:
            await settled_peak(proc.proc.pid, BUDGET_MIB * MIB)
            good = GoodClient()
            await good.run(pki, proc.port, token, seconds=1)
            peak = await settled_peak(proc.proc.pid, BUDGET_MIB * MIB)
            streamed = workload.uploads_most  # before the uploads end and free their slots
        finally:
            stop.set()
            for thread in uploads:
                await asyncio.to_thread(thread.join)
    assert peak < BUDGET_MIB * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    assert good.failures == [] and good.latencies
    # Past the total, uploads streamed instead, in turn, through half the pool.
    assert streamed == 5

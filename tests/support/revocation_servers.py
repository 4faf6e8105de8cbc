"""Revocation sources for tests, as real servers on loopback: a CRL distribution point (aiohttp,
on its own thread and loop, so a `certbound run` process can fetch from it while the test's
loop waits for that process to start) and `openssl ocsp` as the OCSP responder."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator

from aiohttp import web

from tests.support.openssl_ca import Leaf, OpenSSLCA


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DistributionPoint:
    """Serves `bodies[path]` over plain HTTP; `up = False` answers nothing (connection
    refused), as a distribution point that is down does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: dict[str, bytes] = {}
        self.hits = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits += 1
        name = request.match_info["name"]
        body = self.bodies.get(name)
        if body is None:
            return web.Response(status=404)
        if not name.endswith(".chunked"):
            return web.Response(body=body, content_type="application/pkix-crl")
        # No Content-Length: the size bound must hold while reading, not only from the head.
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 1 << 20):
            await response.write(body[start : start + (1 << 20)])
        await response.write_eof()
        return response

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@contextlib.contextmanager
def distribution_point() -> Iterator[DistributionPoint]:
    point = DistributionPoint()
    point.start()
    try:
        yield point
    finally:
        point.close()


@contextlib.contextmanager
def ocsp_responder(ca: OpenSSLCA, signer: Leaf, port: int) -> Iterator[subprocess.Popen[str]]:
    """`openssl ocsp` answering from the CA's index file (re-read as revocations happen),
    signing with a delegated responder certificate (OCSPSigning EKU)."""
    proc = subprocess.Popen(
        [
            "openssl", "ocsp", "-index", str(ca.dir / "index.txt"), "-port", str(port),
            "-rsigner", str(signer.cert), "-rkey", str(signer.key), "-CA", str(ca.cert),
            "-nmin", "5", "-ignore_err", "-timeout", "2",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # Wait for its own word: a probe connection would hold the one-at-a-time responder.
        assert proc.stdout is not None
        seen = ""
        while "waiting for OCSP client connections" not in seen:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"openssl ocsp did not start: {seen}")
            seen += line
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout:
            proc.stdout.close()

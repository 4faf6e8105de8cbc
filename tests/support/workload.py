"""A workload that misbehaves on command, and clients that stall, for the stalled-peer tests.

The workload speaks HTTP/1.1 on raw asyncio streams so each fault is exact. By path:
  /ok             200 with "ok"
  /sleep?s=F      200 after F seconds
  /big?bytes=N    200 with N bytes, written as fast as the connection takes them
  /upload         reads the whole body (Content-Length), then 200 with its size
  /drop           reads the request (head and body) and closes without answering
It records every request head it gets (method, path, which connection), how many request
bodies are being read at once, and every connection that closed under an unfinished answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.rawhttp import RawServer, bearer_request
from tests.support.stack import AUDIENCE, PKI, Issuer


@dataclass
class Workload(RawServer):
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, conn
    connections: int = 0  # connections accepted so far; each request names its own
    uploads_now: int = 0  # request bodies being read right now
    uploads_most: int = 0  # the most read at once
    cut: int = 0  # answers whose connection closed before they were written whole

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.requests if method is None or m == method]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = head.split(b" ", 2)[:2]
                url = urlsplit(target.decode())
                query = parse_qs(url.query)
                self.requests.append((method.decode(), url.path, number))
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not await self._answer(url.path, query, length, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(
        self,
        path: str,
        query: dict[str, list[str]],
        length: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False: close the connection."""
        if path == "/upload":
            self.uploads_now += 1
            self.uploads_most = max(self.uploads_most, self.uploads_now)
            try:
                await reader.readexactly(length)
            finally:
                self.uploads_now -= 1
            body = str(length).encode()
        else:
            await reader.readexactly(length)
            body = b"ok"
        if path == "/drop":
            return False
        if path == "/sleep":
            await asyncio.sleep(float(query["s"][0]))
        if path == "/big":
            size = int(query["bytes"][0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"y" * 65536
            sent = 0
            try:
                while sent < size:
                    writer.write(chunk[: size - sent])
                    sent += min(len(chunk), size - sent)
                    await writer.drain()
            except ConnectionError:
                self.cut += 1
                return False
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()
        return True


def client_tls(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(*pki.files("alice"))
    return ctx


async def open_client(
    pki: PKI, port: int, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An mTLS connection as alice. `receive_buffer`: a small kernel receive buffer and a
    small reader limit, so a client that never reads stalls the proxy's writes quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(
        sock=sock,
        ssl=client_tls(pki),
        server_hostname="localhost",
        limit=receive_buffer or 65536,
    )


async def read_status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1]) if line else 0


@dataclass
class GoodClient:
    """One kept-alive client sending GET /ok back to back, timing each answer."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self, pki: PKI, port: int, token: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        reader, writer = await open_client(pki, port)
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    writer.write(bearer_request(token, "GET", "/ok"))
                    status = await asyncio.wait_for(read_status(reader), 10)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    self.failures.append(type(exc).__name__)
                    writer.close()
                    reader, writer = await open_client(pki, port)
                    continue
                self.latencies.append(time.monotonic() - started)
                if status != 200:
                    self.failures.append(str(status))
                await asyncio.sleep(0.02)
        finally:
            writer.close()

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def workload_config(
    pki: PKI, issuer: Issuer, workload: Workload, tmp_path: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A `certbound run` configuration in front of `workload`; `sections` add to it."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    cert, key = pki.files("server")
    return {
        "tls": {"cert_file": cert, "key_file": key, "client_ca_file": pki.ca_file},
        "tokens": {"issuer": issuer.url, "audience": AUDIENCE, "jwks_file": str(jwks)},
        **sections,
        "upstream": {"url": workload.url, **sections.get("upstream", {})},
    }

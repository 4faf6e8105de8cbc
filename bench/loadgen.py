"""Small HTTP/1.1 load generator with client certificates (mTLS), used by bench/run.py and
bench/soak.py. One process, raw asyncio protocols (uvloop when installed), no pipelining: one
request in flight per connection.

Why our own: wrk (Debian) speaks TLS but cannot present a client certificate (its Lua API has no
hook for the SSL context), h2load (nghttp2-client) has no client-certificate option either, and
oha/hey/vegeta are not in Debian. ab (apache2-utils) has -E for a client certificate but sends
HTTP/1.0, cannot vary the token per request and has no open-loop rate mode. This one does all the
cases the bench needs: keep-alive saturation, an open-loop fixed rate (latency measured from the
intended send time, so no coordinated omission), a new TLS connection per request, and a
different bearer token on every request.

It is meant to be pinned to its own core (run.py uses `taskset -c 1`); on one core it tops out
around the rates printed in the bench's "SUT CPU" column, which is why that column exists.

    .venv/bin/python bench/loadgen.py --url https://127.0.0.1:8443/x --ca ca.pem \
        --cert alice.pem --key alice.key --token-file tokens.txt --mode closed -c 32 -d 10
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Stats:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    connections: int = 0


class _Client(asyncio.Protocol):
    """One connection; `request` sends one request and waits for the whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._try_complete()

    def _try_complete(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        length = -1
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            eol = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : eol if eol >= 0 else len(head)])
        if length >= 0:
            total = end + 4 + length
            if len(buf) < total:
                return
        elif b"transfer-encoding: chunked" in head:
            term = buf.find(b"0\r\n\r\n", end + 4)
            if term < 0:
                return
            total = term + 5
        else:
            return  # read until close
        status = int(buf[9:12])
        close = b"\r\nconnection: close" in head
        del buf[:total]
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, close))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc or ConnectionResetError("closed by server"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def request(self, data: bytes) -> tuple[int, bool]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._waiter


@dataclass
class Target:
    host: str
    port: int
    path: str
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    tokens: list[str]
    proofs: list[str] = field(default_factory=list)  # DPoP: one fresh proof per request
    counter: int = 0

    def next_request(self, close: bool) -> bytes:
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {self.server_hostname or self.host}"]
        if self.proofs:
            # Never wrapped around: a proof used twice is a replay (a 401 the bench counts).
            lines.append("Authorization: DPoP " + self.tokens[0])
            lines.append("DPoP: " + self.proofs[min(self.counter, len(self.proofs) - 1)])
            self.counter += 1
        elif self.tokens:
            lines.append("Authorization: Bearer " + self.tokens[self.counter % len(self.tokens)])
            self.counter += 1
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    async def connect(self, stats: Stats) -> _Client:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            _Client, self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
        )
        stats.connections += 1
        return proto


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return "tls:" + (exc.reason or type(exc).__name__)
    return type(exc).__name__


async def _closed_worker(t: Target, stats: Stats, stop_at: float, new_conn: bool) -> None:
    client: _Client | None = None
    while time.perf_counter() < stop_at:
        try:
            if client is None or client.transport is None or client.transport.is_closing():
                client = await t.connect(stats)
            started = time.perf_counter()
            status, close = await client.request(t.next_request(new_conn))
            stats.latencies.append(time.perf_counter() - started)
            stats.statuses[status] += 1
            if close or new_conn:
                assert client.transport is not None
                client.transport.close()
                client = None
        except (TimeoutError, OSError, ConnectionError) as exc:
            stats.errors[_classify(exc)] += 1
            client = None
            await asyncio.sleep(0.01)
    if client is not None and client.transport is not None:
        client.transport.close()


async def _open_worker(t: Target, stats: Stats, queue: asyncio.Queue[float | None]) -> None:
    client: _Client | None = None
    while True:
        intended = await queue.get()
        if intended is None:
            break
        try:
            if client is None or client.transport is None or client.transport.is_closing():
                client = await t.connect(stats)
            status, close = await client.request(t.next_request(False))
            stats.latencies.append(time.perf_counter() - intended)  # from the intended send time
            stats.statuses[status] += 1
            if close:
                client = None
        except (TimeoutError, OSError, ConnectionError) as exc:
            stats.errors[_classify(exc)] += 1
            client = None
    if client is not None and client.transport is not None:
        client.transport.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    ctx: ssl.SSLContext | None = None
    if url.scheme == "https":
        ctx = ssl.create_default_context(cafile=args.ca)
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    tokens: list[str] = args.tokens
    target = Target(
        host=url.hostname or "127.0.0.1",
        port=url.port or (443 if ctx else 80),
        path=url.path or "/",
        ssl=ctx,
        server_hostname=args.server_name if ctx else None,
        tokens=tokens,
        proofs=args.proofs,
    )
    stats = Stats()
    started = time.perf_counter()
    stop_at = started + args.duration
    if args.mode in ("closed", "newconn"):
        await asyncio.gather(
            *(
                _closed_worker(target, stats, stop_at, args.mode == "newconn")
                for _ in range(args.concurrency)
            )
        )
    else:
        queue: asyncio.Queue[float | None] = asyncio.Queue()
        workers = [
            asyncio.create_task(_open_worker(target, stats, queue)) for _ in range(args.concurrency)
        ]
        interval = 1.0 / args.rate
        n = int(args.duration * args.rate)
        for i in range(n):
            intended = started + i * interval
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(intended)
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    lat = sorted(stats.latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

    done = sum(stats.statuses.values())
    return {
        "mode": args.mode,
        "requests": done,
        "elapsed": round(elapsed, 3),
        "rps": round(done / elapsed, 1) if elapsed else 0,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": dict(stats.errors),
        "connections": stats.connections,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 3) if lat else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="mTLS-capable HTTP/1.1 load generator")
    p.add_argument("--url", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--token-file", help="one token per line; request i uses token i mod n")
    p.add_argument(
        "--dpop-file", help="DPoP proofs, one per line, each used once, with the first token"
    )
    p.add_argument("--mode", choices=("closed", "open", "newconn"), default="closed")
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=200.0, help="open mode: requests/s")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    args.tokens = []
    if args.token_file:
        with open(args.token_file, encoding="ascii") as fh:
            args.tokens = [line.strip() for line in fh if line.strip()]
    args.proofs = []
    if args.dpop_file:
        with open(args.dpop_file, encoding="ascii") as fh:
            args.proofs = [line.strip() for line in fh if line.strip()]
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    result = runner(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Flood clients for the memory bounds (issue 20): many connections to the mTLS port, held open.

    python -m bench.floods tcp --port 8443 -n 5000            # TCP connections, no byte sent
    python -m bench.floods half-open --port 8443 -n 10000     # a ClientHello each, then nothing
    python -m bench.floods mtls --port 8443 -n 3000 --ca ca.pem --cert c.pem --key c.key
                                                              # complete mTLS handshakes, idle

Opens -n connections (--parallel at a time, or --rate a second), prints `opened N closed M`
once all were tried, then holds them until standard input closes and prints `held N closed M`
(closed: by the server, so far). tests/faults/test_floods.py runs it beside a real proxy
with small counts; bench/memory.py with the big ones, and prints the proxy's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys


def client_hello() -> bytes:
    """The first flight of a TLS client, as any client would send it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        sslobj.do_handshake()
    return outgoing.read()


class Flood:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.opened = 0
        self.closed = 0
        self.failed = 0
        self.hello = client_hello()
        self.ctx: ssl.SSLContext | None = None
        if args.kind == "mtls":
            self.ctx = ssl.create_default_context(cafile=args.ca)
            self.ctx.load_cert_chain(args.cert, args.key)
            self.ctx.check_hostname = False
        self.writers: list[asyncio.StreamWriter] = []
        self.watchers: list[asyncio.Task[None]] = []

    async def one(self, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(
                    self.args.host, self.args.port, ssl=self.ctx, limit=1 << 20
                )
            except (OSError, ssl.SSLError):
                self.failed += 1
                return
            if self.args.kind == "half-open":
                writer.write(self.hello)
            self.opened += 1
            self.writers.append(writer)
        self.watchers.append(asyncio.create_task(self.watch(reader)))

    async def watch(self, reader: asyncio.StreamReader) -> None:
        """Reads what the server sends (its handshake flight), until it closes."""
        with contextlib.suppress(OSError, ssl.SSLError):
            while await reader.read(65536):
                pass
        self.closed += 1

    async def run(self) -> None:
        gate = asyncio.Semaphore(self.args.parallel)
        if self.args.rate > 0:
            # Paced, as a flood that the proxy's CPU keeps up with: what is then measured is
            # memory and the caps, not a full accept queue dropping everyone's SYNs.
            loop, tasks = asyncio.get_running_loop(), []
            started = loop.time()
            for i in range(self.args.n):
                await asyncio.sleep(max(0.0, started + i / self.args.rate - loop.time()))
                tasks.append(asyncio.create_task(self.one(gate)))
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*(self.one(gate) for _ in range(self.args.n)))
        await asyncio.sleep(0.2)
        print(f"opened {self.opened} closed {self.closed} failed {self.failed}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(f"held {self.opened - self.closed} closed {self.closed}", flush=True)
        for writer in self.writers:
            writer.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["tcp", "half-open", "mtls"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0, help="connections/s; 0: at once")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    asyncio.run(Flood(args).run())


if __name__ == "__main__":
    main()

"""What one mTLS connection costs the server's TLS layer: CPU per request and memory per
idle connection, certbound's TLSChannel (pyOpenSSL, the OpenSSL inside cryptography's wheel)
beside the standard library's SSLObject (the system's OpenSSL), in one run.

    .venv/bin/python bench/tls_cost.py [--connections 1000]

The client is Python's ssl over memory BIOs, TLS 1.3 with a client certificate; one request
(a 700-byte token) and one small response per round, as bench/run.py's (d) sends.
  CPU: the server's calls only (records in, plaintext out; the response in, records out),
       best of 7 rounds of 20,000 requests, wall clock in this one thread.
  memory: glibc's count of bytes in use (mallinfo2) per connection that completed its
       handshake and one request and is now idle, the clients freed: what the connection
       holds, not what the allocator kept. SSL_new alone beside it. The standard library
       cannot turn its server session cache off, so its figure includes a cached session.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib as _openssl

try:
    from bench import harness as h
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]

from proxy.settings import TLSSettings
from proxy.trust.channel import TLSChannel
from proxy.trust.tls import build_server_context

REQUEST = b"GET /bench/resource HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 700
REQUEST += b"\r\n\r\n"
RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}'


_MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS.split()]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def in_use() -> int:
    gc.collect()
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class Client:
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.inbox, self.outbox = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inbox, self.outbox, server_side=False)

    def step(self) -> tuple[bool, bytes]:
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        return done, self.outbox.read()


class Pyopenssl:
    """The server side as certbound's data plane drives it."""

    def __init__(self, ctx: Any) -> None:
        self.channel = TLSChannel(ctx)
        self.open = False

    def take(self, data: bytes) -> bytes:
        if not self.open:
            self.open = self.channel.handshake(data, "bench")
            return self.channel.outgoing()
        self.channel.decrypt(data)
        return self.channel.outgoing()

    def request(self, records: bytes) -> bytes:
        self.channel.decrypt(records)
        return self.channel.encrypt(RESPONSE)


class Stdlib:
    """The server side as asyncio's sslproto drives an SSLObject."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.inbox, self.outbox = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inbox, self.outbox, server_side=True)
        self.open = False

    def take(self, data: bytes) -> bytes:
        self.inbox.write(data)
        if not self.open:
            try:
                self.tls.do_handshake()
                self.open = True
            except ssl.SSLWantReadError:
                pass
        return self.outbox.read()

    def request(self, records: bytes) -> bytes:
        self.inbox.write(records)
        while True:
            try:
                self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
        self.tls.write(RESPONSE)
        return self.outbox.read()


def connect(server: Any, client: Client) -> None:
    for _ in range(10):
        done, data = client.step()
        if data:
            client.inbox.write(server.take(data))
        if done and server.open:
            break
    assert server.open, "handshake did not complete"
    client.tls.write(REQUEST)
    client.inbox.write(server.request(client.outbox.read()))
    client.tls.read(4096)


def cpu_per_request(make: Callable[[], Any], cctx: ssl.SSLContext) -> float:
    server, client = make(), Client(cctx)
    connect(server, client)
    best = float("inf")
    for _ in range(7):
        spent = 0.0
        for _ in range(20000):
            client.tls.write(REQUEST)
            records = client.outbox.read()
            start = time.perf_counter()
            out = server.request(records)
            spent += time.perf_counter() - start
            client.inbox.write(out)
            client.tls.read(4096)
        best = min(best, spent / 20000 * 1e6)
    return best


def memory_per_connection(make: Callable[[], Any], cctx: ssl.SSLContext, n: int) -> float:
    warm = [make() for _ in range(50)]
    for server in warm:
        connect(server, Client(cctx))
    del warm
    before = in_use()
    held = []
    for _ in range(n):
        server = make()
        connect(server, Client(cctx))
        held.append(server)
    return (in_use() - before) / n / 1024


def ssl_new_alone(ctx: Any, n: int) -> float:
    before = in_use()
    made = [_openssl.SSL_new(ctx._context) for _ in range(n)]
    grown = (in_use() - before) / n / 1024
    for one in made:
        _openssl.SSL_free(one)
    return grown


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=1000)
    args = p.parse_args()
    m = h.make_material(Path(tempfile.mkdtemp(prefix="certbound-tls-cost-")), 1)
    ours = build_server_context(
        TLSSettings(
            cert_file=str(m.server_cert), key_file=str(m.server_key), client_ca_file=str(m.ca)
        )
    )
    theirs = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    theirs.load_cert_chain(m.server_cert, m.server_key)
    theirs.load_verify_locations(m.ca)
    theirs.verify_mode = ssl.CERT_REQUIRED
    theirs.options |= ssl.OP_NO_TICKET
    cctx = ssl.create_default_context(cafile=str(m.ca))
    cctx.check_hostname = False
    cctx.load_cert_chain(m.alice_cert, m.alice_key)

    sides: dict[str, Callable[[], Any]] = {
        f"certbound TLSChannel ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})": lambda: (
            Pyopenssl(ours)
        ),
        f"standard library SSLObject ({ssl.OPENSSL_VERSION})": lambda: Stdlib(theirs),
    }
    cpu = {name: cpu_per_request(make, cctx) for name, make in sides.items()}
    memory = {
        name: memory_per_connection(make, cctx, args.connections) for name, make in sides.items()
    }
    (a, b) = sides
    held = args.connections
    print(f"server TLS work per request (µs), memory per idle connection (KB), {held} held")
    for name in sides:
        print(f"  {name}: {cpu[name]:.2f} µs, {memory[name]:.1f} KB")
    print(f"  ratio: CPU {cpu[a] / cpu[b]:.2f}x, memory {memory[a] / memory[b]:.2f}x")
    print(f"  SSL_new alone in certbound's OpenSSL: {ssl_new_alone(ours, args.connections):.1f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

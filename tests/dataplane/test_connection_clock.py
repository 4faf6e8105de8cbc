"""ClientConnection driven directly, with no socket and no real waiting: the test is the
connection's transport (it records writes, close and abort, and reports a send buffer) and
owns the event loop's clock, which moves only when the test advances it. The client is a
real TLS client (ssl.MemoryBIO) with certificates made here, so the server side's real
pyOpenSSL handshake runs; each timeout is checked a millisecond before and after."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy import metrics
from proxy.checks.pipeline import Pipeline
from proxy.dataplane.connection import ClientConnection
from proxy.dataplane.deadline import STALL_GRACE
from proxy.dataplane.plane import Plane
from proxy.dataplane.pool import UpstreamPool
from proxy.settings import (
    ListenSettings,
    Settings,
    TLSSettings,
    TokenSettings,
    UpstreamSettings,
    trusted_issuers,
)
from proxy.tokens.issuers import Issuers
from proxy.tokens.jwt import JWTVerifier, TokenCache
from proxy.tools.pki import issue, make_ca
from proxy.trust.identity import compute_thumbprint
from proxy.trust.tls import ServerTLS

# Seconds of virtual time; none is waited for.
HANDSHAKE, IDLE, SEND, BODY, UPGRADE_IDLE = 10.0, 60.0, 20.0, 30.0, 300.0
JUST = 0.001
ISSUER, AUDIENCE = "https://issuer.test", "https://orders.test"


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A real event loop whose time() is the test's: call_later fires when the test has
    advanced past it, never by waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__()

    def time(self) -> float:
        return self.now


class RecordingTransport(asyncio.Transport):
    """The connection's peer interface, as the loop's socket transport offers it."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closed = self.aborted = False
        self.buffered = 0  # what get_write_buffer_size reports
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed and not self.aborted, "written after close"
        self.written += data

    def take(self) -> bytes:
        out, self.written = bytes(self.written), bytearray()
        return out

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        if not self.is_closing():
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        if not self.aborted:
            was_closing, self.aborted = self.closed, True
            if not was_closing:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


@dataclass
class Certificates:
    """The TLS files, and a JWKS file with the key that signs `token` (bound to the client)."""

    server: tuple[str, str]
    client: tuple[str, str]
    ca_file: str
    jwks_file: str
    token: str


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    d = tmp_path_factory.mktemp("clock-pki")
    ca = make_ca("clock test CA")
    (d / "ca.pem").write_bytes(ca.cert_pem)
    issue(ca, "localhost", server=True, client=False, dns_names=("localhost",)).write(d, "server")
    alice = issue(ca, "alice", uris=("spiffe://test/alice",))
    alice.write(d, "alice")
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (d / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))
    now = int(time.time())  # the token's times are wall-clock times, not the loop's
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "orders-app",
        "iat": now,
        "exp": now + 600,
        "cnf": {"x5t#S256": compute_thumbprint(alice.cert_der)},
    }
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1", "typ": "at+jwt"})

    def pair(name: str) -> tuple[str, str]:
        return str(d / f"{name}.pem"), str(d / f"{name}.key")

    return Certificates(
        pair("server"), pair("alice"), str(d / "ca.pem"), str(d / "jwks.json"), token
    )


@dataclass
class Client:
    """A TLS client over memory BIOs, wired to one ClientConnection through the transport."""

    conn: ClientConnection
    transport: RecordingTransport
    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    loop: VirtualClockLoop
    plane: Plane
    received: bytearray = field(default_factory=bytearray)

    def pump(self) -> None:
        """Carry the client's bytes to the connection and the connection's back."""
        out = self.outgoing.read()
        if out:
            self.conn.data_received(out)
        answer = self.transport.take()
        if answer:
            self.incoming.write(answer)

    def hello(self) -> None:
        """The ClientHello only: a handshake begun and never finished."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        self.pump()

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.pump()
        self.pump()  # the client's Finished
        assert not self.transport.is_closing()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.pump()

    def answer(self) -> bytes:
        """What the connection has sent the client, decrypted, up to its close_notify."""
        self.pump()
        pieces = []
        while True:
            try:
                piece = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            if not piece:
                break
            pieces.append(piece)
        return b"".join(pieces)

    async def advance(self, seconds: float) -> None:
        """Move the loop's clock, then let the loop run what is due (timers, connection_lost)."""
        self.loop.now += seconds
        for _ in range(4):
            await asyncio.sleep(0)


Scenario = Callable[[Client], Awaitable[None]]


def run(certificates: Certificates, scenario: Scenario, **listen: float) -> None:
    """Run `scenario` on a virtual-clock loop against a fresh connection and plane."""
    loop = VirtualClockLoop()
    try:
        loop.run_until_complete(_connected(certificates, scenario, listen, loop))
    finally:
        loop.close()


async def _connected(
    certificates: Certificates,
    scenario: Scenario,
    listen: dict[str, float],
    loop: VirtualClockLoop,
) -> None:
    cert, key = certificates.server
    settings = Settings(
        listen=ListenSettings(
            host="127.0.0.1",
            port=0,
            handshake_timeout_seconds=HANDSHAKE,
            idle_timeout_seconds=IDLE,
            send_timeout_seconds=SEND,
            body_timeout_seconds=BODY,
            **listen,
        ),
        tls=TLSSettings(cert_file=cert, key_file=key, client_ca_file=certificates.ca_file),
        # Never connected to: no scenario takes an upstream connection.
        upstream=UpstreamSettings(
            url="http://127.0.0.1:9", upgrade_idle_timeout_seconds=UPGRADE_IDLE
        ),
        tokens=TokenSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=certificates.jwks_file),
    )
    async with aiohttp.ClientSession() as session:
        issuers = Issuers(trusted_issuers(settings.tokens), settings.tokens, session)
        await issuers.refresh()  # from the file: the checks run as in production
        pipeline = Pipeline(settings, JWTVerifier(issuers, TokenCache(16)), None)
        plane = Plane(settings, ServerTLS(settings.tls), pipeline, UpstreamPool(settings.upstream))
        plane.clock = loop.time
        conn = ClientConnection(plane)
        transport = RecordingTransport(conn)
        conn.connection_made(transport)
        context = ssl.create_default_context(cafile=certificates.ca_file)
        context.load_cert_chain(*certificates.client)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        client = Client(conn, transport, tls, incoming, outgoing, loop, plane)
        try:
            await scenario(client)
        finally:
            conn.abort()
            await client.advance(0)


def handshake_timeouts() -> float:
    return metrics.TLS_HANDSHAKE_FAILURES.labels(reason="timeout")._value.get()


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


@dataclass
class TunnelEnd:
    """The upstream end of an upgraded connection, as ports.TunnelEnd: records what the
    client sent through the tunnel."""

    relayed: bytearray = field(default_factory=bytearray)
    is_closed: bool = False

    def tunnel_write(self, data: bytes) -> None:
        self.relayed += data

    def tunnel_closed(self) -> None:
        self.is_closed = True


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

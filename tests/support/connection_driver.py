"""Drives one ClientConnection with no socket and no real waiting: the test is the
connection's transport (it records writes, close and abort, and reports a send buffer) and
owns the event loop's clock, which moves only when the test advances it. The client is a
real TLS client (ssl.MemoryBIO) with certificates made here, so the server's real pyOpenSSL
handshake runs, and a real bound token goes through the real checks."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.checks.pipeline import Pipeline
from proxy.dataplane.connection import ClientConnection
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


def make_certificates(d: Path) -> Certificates:
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

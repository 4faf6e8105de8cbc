"""One client connection's TLS, over memory BIOs: ciphertext in, plaintext out, and back.

No I/O: the connection hands it the bytes it read and writes the bytes it returns. A failed
handshake comes out as HandshakeRefused with the reason already counted and logged.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto

from proxy.trust import handshake
from proxy.trust.verify import ChainRecord

# A TLS record holds at most 16 KiB of plaintext; one read takes one record.
RECORD_PLAINTEXT = 16384
_HEADER = 5


class TLSBroken(Exception):
    """The peer sent something TLS cannot accept after the handshake; abort the connection."""


class TLSChannel:
    __slots__ = ("_chain", "_conn", "_header", "_skip")

    def __init__(self, context: SSL.Context) -> None:
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        self._chain = ChainRecord()  # what the verify callback refused, if anything
        conn.set_app_data(self._chain)
        self._conn = conn
        # Where the client's byte stream stands among TLS records, so that reading stops
        # when every complete record has been read, without a failing read to find out.
        self._skip = 0  # bytes of the current record still to come
        self._header = b""  # a record header that arrived in part

    def handshake(self, data: bytes, peer: str) -> bool:
        """Feed the client's bytes; True when the handshake is complete. Raises
        HandshakeRefused (counted and logged) when OpenSSL ends it."""
        self._feed(data)
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            handshake.refused_chain(exc, self._chain.failure, peer)
            raise HandshakeRefused from None
        return True

    def peer_certificate(self) -> bytes | None:
        """The client's certificate (DER), from this handshake or from the resumed session."""
        certificate = self._conn.get_peer_certificate()
        if certificate is None:
            return None
        return crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)

    def decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """(plaintext, whether the client sent close_notify). Raises TLSBroken."""
        records = self._feed(data) if data else -1
        conn, pieces, closed = self._conn, [], False
        try:
            while records:
                pieces.append(conn.recv(RECORD_PLAINTEXT))
                records -= 1
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            closed = True
        except SSL.Error as exc:
            raise TLSBroken(handshake.openssl_reason(exc)) from None
        if len(pieces) == 1:
            return pieces[0], closed
        return b"".join(pieces), closed

    def encrypt(self, data: bytes) -> bytes:
        """The records carrying `data`, to be written to the client."""
        conn, view, sent = self._conn, memoryview(data), 0
        while sent < len(data):
            sent += conn.send(view[sent:])
        return self.outgoing(len(data) + len(data) // 256 + 64)

    def outgoing(self, expected: int = 65536) -> bytes:
        """Everything OpenSSL has written for the client (handshake flights, alerts, records);
        `expected` is a size guess, read again while it is filled."""
        pieces = []
        try:
            while True:
                piece = self._conn.bio_read(expected)
                pieces.append(piece)
                if len(piece) < expected:
                    break
        except SSL.WantReadError:
            pass
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def close_notify(self) -> bytes:
        """The close_notify alert to send before FIN (the client's is not awaited)."""
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        return self.outgoing(1024)

    def _feed(self, data: bytes) -> int:
        """Give OpenSSL the client's bytes; the number of records they complete."""
        self._conn.bio_write(data)
        if self._header:
            data, self._header = self._header + data, b""
        size, position = len(data), self._skip
        records = 1 if 0 < position <= size else 0  # the record in progress ends here
        while position < size:
            if size - position < _HEADER:
                self._header = data[position:]
                position = size
                break
            position += _HEADER + ((data[position + 3] << 8) | data[position + 4])
            if position <= size:
                records += 1
        self._skip = position - size
        return records


class HandshakeRefused(Exception):
    """The handshake failed; the refusal is counted and logged already."""

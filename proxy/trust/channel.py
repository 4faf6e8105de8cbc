"""One client connection's TLS, over memory BIOs: ciphertext in, plaintext out, and back.

No I/O: the connection hands it the bytes it read and writes the bytes it returns. A failed
handshake comes out as HandshakeRefused with the reason already counted and logged.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _openssl

from proxy.trust import handshake
from proxy.trust.verify import ChainRecord

# A TLS record holds at most 16 KiB of plaintext; one read takes one record.
RECORD_PLAINTEXT = 16384
# Per request, the data path calls OpenSSL through pyOpenSSL's own cffi binding rather than
# its Connection methods: their Python layers (a buffer allocated per call, error dispatch,
# an exception for every empty read) cost more than the rest of the TLS work together
# (bench: 3x the standard library's SSLObject per request, 1.2x this way). Every call reads
# into this one buffer and copies out at once: the event loop is one thread.
_SCRATCH_SIZE = 256 * 1024
_scratch = _ffi.new("char[]", _SCRATCH_SIZE)
_WANT_READ = _openssl.SSL_ERROR_WANT_READ
_ZERO_RETURN = _openssl.SSL_ERROR_ZERO_RETURN
# An OpenSSL memory BIO keeps the most it ever held at once (its buffer grows and never
# shrinks): one 256 KiB read or response would stay allocated, each way, for as long as the
# connection lives (~700 KB per idle connection after one large upload and download,
# measured). So a BIO that held more than this at once, or the handshake's flights, is
# replaced by a fresh one once it is empty (0.5 µs): an idle connection keeps at most ~11 KB
# per direction, and requests and responses under this size never pay for a renewal.
_BIO_KEEP = 8 * 1024


def _fresh_bio() -> Any:
    bio = _openssl.BIO_new(_openssl.BIO_s_mem())
    if bio == _ffi.NULL:
        raise MemoryError("OpenSSL could not allocate a memory BIO")
    return bio


class TLSBroken(Exception):
    """The peer sent something TLS cannot accept after the handshake; abort the connection."""


class HandshakeRefused(Exception):
    """The handshake failed; the refusal is counted and logged already."""


class TLSChannel:
    __slots__ = ("_chain", "_conn", "_into", "_into_keep", "_out", "_out_keep", "_ssl")

    def __init__(self, context: SSL.Context) -> None:
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        self._chain = ChainRecord()  # what the verify callback refused, if anything
        conn.set_app_data(self._chain)
        self._conn = conn
        self._ssl, self._into, self._out = conn._ssl, conn._into_ssl, conn._from_ssl
        # A BIO is renewed once drained after holding more than this at once.
        self._into_keep = self._out_keep = _BIO_KEEP

    def handshake(self, data: bytes, peer: str) -> bool:
        """Feed the client's bytes; True when the handshake is complete. Raises
        HandshakeRefused (counted and logged) when OpenSSL ends it."""
        _openssl.BIO_write(self._into, data, len(data))  # a memory BIO takes all
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            handshake.refused_chain(exc, self._chain.failure, peer)
            raise HandshakeRefused from None
        # The flights are through: both BIOs are renewed once drained.
        self._into_keep = self._out_keep = -1
        return True

    def peer_certificate(self) -> bytes | None:
        """The client's certificate (DER), from this handshake or from the resumed session."""
        certificate = self._conn.get_peer_certificate()
        if certificate is None:
            return None
        return crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)

    def decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """(plaintext, whether the client sent close_notify). Raises TLSBroken."""
        ssl, into = self._ssl, self._into
        if data:
            _openssl.BIO_write(into, data, len(data))
        pieces: list[bytes] = []
        closed = False
        while True:
            size = _openssl.SSL_read(ssl, _scratch, RECORD_PLAINTEXT)
            if size > 0:
                pieces.append(_ffi.unpack(_scratch, size))
                # Bytes left in the BIO, or in OpenSSL's record: read on; else, done.
                if _openssl.BIO_get_mem_data(into, _ffi.NULL) or _openssl.SSL_pending(ssl):
                    continue
                break
            error = _openssl.SSL_get_error(ssl, size)
            if error == _ZERO_RETURN:
                closed = True
            elif error != _WANT_READ:
                self._broken()
            break
        if len(data) > self._into_keep and not _openssl.BIO_get_mem_data(into, _ffi.NULL):
            self._renew_into()
        if len(pieces) == 1:
            return pieces[0], closed
        return b"".join(pieces), closed

    def encrypt(self, data: bytes) -> bytes:
        """The records carrying `data`, to be written to the client."""
        if type(data) is not bytes:
            data = bytes(data)  # the binding takes bytes only
        size = len(data)
        sent = _openssl.SSL_write(self._ssl, data, size) if size else 0
        if sent != size:
            # pyOpenSSL turns on SSL_MODE_ENABLE_PARTIAL_WRITE: a write longer than a record
            # may come back after each record. A memory BIO never blocks, so go on from there.
            view = _ffi.from_buffer(data)
            while 0 < sent < size:
                more = _openssl.SSL_write(self._ssl, view + sent, size - sent)
                if more <= 0:
                    break
                sent += more
            if sent != size:
                self._broken()
        return self.outgoing()

    def outgoing(self) -> bytes:
        """Everything OpenSSL has written for the client: handshake flights, alerts, records."""
        pieces: list[bytes] = []
        held = 0
        while True:
            size = _openssl.BIO_read(self._out, _scratch, _SCRATCH_SIZE)
            if size <= 0:
                break
            held += size
            pieces.append(_ffi.unpack(_scratch, size))
            if size < _SCRATCH_SIZE:
                break
        if held > self._out_keep:
            self._renew_out()  # drained: BIO_read returned less than it asked for
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def _renew_into(self) -> None:
        # SSL_set_bio with the write BIO unchanged frees the old read BIO only.
        fresh = _fresh_bio()
        _openssl.SSL_set_bio(self._ssl, fresh, self._out)
        self._into = self._conn._into_ssl = fresh
        self._into_keep = _BIO_KEEP

    def _renew_out(self) -> None:
        # SSL_set_bio with the read BIO unchanged frees the old write BIO only.
        fresh = _fresh_bio()
        _openssl.SSL_set_bio(self._ssl, self._into, fresh)
        self._out = self._conn._from_ssl = fresh
        self._out_keep = _BIO_KEEP

    def close_notify(self) -> bytes:
        """The close_notify alert to send before FIN (the client's is not awaited)."""
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        return self.outgoing()

    def _broken(self) -> None:
        """OpenSSL failed on the data path. The public call turns its error queue into an
        exception, and so empties it: it must not be left for the next connection's calls."""
        try:
            self._conn.recv(1)
        except SSL.ZeroReturnError:
            raise TLSBroken("the client closed the connection") from None
        except SSL.Error as exc:
            raise TLSBroken(handshake.openssl_reason(exc)) from None
        raise TLSBroken("TLS error")

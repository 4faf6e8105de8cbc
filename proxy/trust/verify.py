"""OpenSSL's verify callback for the mTLS listener: it keeps OpenSSL's decision and records,
on the connection, the first certificate OpenSSL refused, at which depth and
with which X509_V_ERR code, so that the refusal can be logged with the certificate's names.
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _openssl


@dataclass(frozen=True, slots=True)
class ChainFailure:
    code: int  # X509_V_ERR_*
    depth: int  # 0: the client's own certificate; 1: its issuer; ...
    der: bytes  # the certificate refused at that depth (named in the log, never logged whole)

    @property
    def message(self) -> str:
        """OpenSSL's text for the code, e.g. 'certificate has expired'."""
        return str(_ffi.string(_openssl.X509_verify_cert_error_string(self.code)).decode())


class ChainRecord:
    """Set as the pyOpenSSL connection's app data; it holds nothing that points back, so a
    closed connection's TLS state is freed at once by reference counting."""

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: ChainFailure | None = None


def on_verify(
    connection: SSL.Connection, certificate: crypto.X509, code: int, depth: int, ok: int
) -> bool:
    # It must never raise: pyOpenSSL keeps a callback's exception on the context, shared by
    # every connection, and raises it from whichever connection calls OpenSSL next.
    if not ok:
        record = connection.get_app_data()
        if isinstance(record, ChainRecord) and record.failure is None:
            try:
                der = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
            except Exception:  # see above: nothing may escape this callback
                der = b""
            record.failure = ChainFailure(code, depth, der)
    return bool(ok)

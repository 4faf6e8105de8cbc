"""Client certificates OpenSSL verifies but cryptography cannot read: made with cryptography
with a placeholder extension, whose OID is then rewritten in the signed part before the
certificate is signed again by its CA."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.tools.pki import Issued, issue
from tests.support.openssl_ca import Leaf

_ECDSA_SHA256 = b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"
_DER_NULL = b"\x05\x00"


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, body)


def _rewritten(
    ca: Issued, name: str, extra: list[tuple[str, bytes]], placeholder: str, target: str
) -> tuple[bytes, Issued]:
    """A client certificate with `extra` extensions, `placeholder`'s OID then made `target`'s
    (both must encode to the same length)."""
    base = issue(ca, name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(base.cert.subject)
        .issuer_name(base.cert.issuer)
        .public_key(base.key.public_key())
        .serial_number(base.cert.serial_number)
        .not_valid_before(base.cert.not_valid_before_utc)
        .not_valid_after(base.cert.not_valid_after_utc)
    )
    for extension in base.cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    for oid, value in extra:
        extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
        builder = builder.add_extension(extension, critical=False)
    tbs = builder.sign(ca.key, hashes.SHA256()).tbs_certificate_bytes
    old, new = _oid(placeholder), _oid(target)
    assert len(old) == len(new) and tbs.count(old) == 1
    tbs = tbs.replace(old, new)
    signature = ca.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _tlv(0x30, tbs + _ECDSA_SHA256 + _tlv(0x03, b"\x00" + signature)), base


def five_byte_ip_san(ca: Issued) -> tuple[bytes, Issued]:
    """subjectAltName with an iPAddress of 5 bytes (RFC 5280 allows 4 or 16)."""
    san = _tlv(0x30, _tlv(0x87, b"\x0a\x00\x00\x01\x05"))
    return _rewritten(ca, "five byte ip", [("2.5.29.99", san)], "2.5.29.99", "2.5.29.17")


def duplicated_extension(ca: Issued) -> tuple[bytes, Issued]:
    """One private extension twice (RFC 5280 §4.2: a certificate has at most one of each)."""
    extra = [("1.3.6.1.4.1.55555.1", _DER_NULL), ("1.3.6.1.4.1.55555.2", _DER_NULL)]
    return _rewritten(
        ca, "duplicated extension", extra, "1.3.6.1.4.1.55555.2", "1.3.6.1.4.1.55555.1"
    )


def write(der: bytes, made: Issued, directory: Path, name: str) -> Leaf:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    key.touch(mode=0o600)
    key.write_bytes(made.key_pem)
    return Leaf(cert, key)

"""Who is on the other end of the TLS connection: leaf certificate -> ClientIdentity.

Pure: takes DER bytes, returns values. Reading the certificate off a connection happens in
server.py, once per connection.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    thumbprint: str  # x5t#S256 of the leaf, RFC 8705 §3.1
    subject: str  # RFC 4514 string
    uris: tuple[str, ...]  # URI SANs (SPIFFE IDs live here)
    dns_names: tuple[str, ...]
    der: bytes  # kept for the optional RFC 9440 Client-Cert header; never logged


def compute_thumbprint(der: bytes) -> str:
    """RFC 8705 §3.1: base64url, no padding, of SHA-256 over the DER encoding of the leaf."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def identity_from_der(der: bytes) -> ClientIdentity:
    return identity_from_certificate(x509.load_der_x509_certificate(der), der)


def identity_from_certificate(cert: x509.Certificate, der: bytes) -> ClientIdentity:
    """`der` is `cert`'s encoding, passed in because the caller has it already."""
    uris: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        pass
    else:
        assert isinstance(san, x509.SubjectAlternativeName)
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
    return ClientIdentity(
        thumbprint=compute_thumbprint(der),
        subject=cert.subject.rfc4514_string(),
        uris=uris,
        dns_names=dns_names,
        der=der,
    )


def thumbprint_of_pem(pem: bytes) -> str:
    """The x5t#S256 of the first certificate in a PEM file (the leaf)."""
    cert = x509.load_pem_x509_certificate(pem)
    return compute_thumbprint(cert.public_bytes(Encoding.DER))

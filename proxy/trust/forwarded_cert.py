"""Client certificate from a header set by a trusted ingress, for pods whose TLS ends before
them: RFC 9440 `Client-Cert` (and `Client-Cert-Chain`) or Envoy's `X-Forwarded-Client-Cert`.

Only configured peers may set it (client_cert.trusted_proxies, optionally only over mTLS from
a proxy certificate with one of trusted_proxy_subjects); from anyone else it is ignored, and
forward.py strips it. The certificate is verified against the client CA bundle with OpenSSL's
own path validation (pyOpenSSL's X509Store), so the rules are those of a handshake.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import time
from collections.abc import Iterable
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto

from proxy.cache import ExpiringCache
from proxy.errors import AuthError, Reason
from proxy.trust.identity import ClientIdentity, identity_from_der

MAX_CHAIN = 5
VERIFIED_TTL = 60.0  # re-verify at least this often, so an expiring cert is noticed


def _malformed(what: str) -> AuthError:
    return AuthError(Reason.MALFORMED_REQUEST, f"forwarded client certificate header: {what}")


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for c in value:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\" and quoted:
            current.append(c)
            escaped = True
        elif c == '"':
            quoted = not quoted
            current.append(c)
        elif c == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    if quoted:
        raise _malformed("unbalanced quotes")
    parts.append("".join(current))
    return parts


def _byte_sequence(item: str) -> bytes:
    """RFC 8941 §3.3.5 byte sequence: `:base64:`."""
    item = item.strip()
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        raise _malformed("not a :base64: byte sequence")
    try:
        return base64.b64decode(item[1:-1], validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("bad base64") from None


def parse_client_cert(value: str, chain: str | None) -> tuple[bytes, list[bytes]]:
    """RFC 9440: leaf DER from Client-Cert, intermediates from Client-Cert-Chain."""
    leaf = _byte_sequence(value)
    intermediates = [_byte_sequence(i) for i in chain.split(",")] if chain else []
    if len(intermediates) > MAX_CHAIN:
        raise _malformed("chain too long")
    return leaf, intermediates


def parse_xfcc(value: str) -> tuple[bytes, list[bytes]]:
    """Envoy XFCC: exactly one element, its Cert="<URL-encoded PEM>" is the client's."""
    elements = _split_outside_quotes(value, ",")
    if len(elements) != 1:
        # Several elements mean several hops appended; which one is the client is a matter
        # of ingress configuration we cannot see, so refuse rather than guess.
        raise _malformed("more than one element")
    cert: str | None = None
    for pair in _split_outside_quotes(elements[0], ";"):
        key, _, raw = pair.partition("=")
        if key.strip().lower() == "cert":
            raw = raw.strip()
            if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                raw = raw[1:-1].replace('\\"', '"')
            cert = unquote(raw)
    if cert is None:
        raise _malformed("no Cert field")
    try:
        leaf = x509.load_pem_x509_certificate(cert.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _malformed("Cert is not a PEM certificate") from None
    return leaf.public_bytes(Encoding.DER), []


def is_trusted_peer(
    address: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


class ForwardedCertVerifier:
    """Path validation of forwarded certificates against the client CA bundle."""

    def __init__(self, ca_file: str, *, x509_strict: bool = False) -> None:
        self._ca_file = ca_file
        self._x509_strict = x509_strict  # as the handshake: tls.x509_strict
        self._store = self._load_store()
        self._verified: ExpiringCache[ClientIdentity] = ExpiringCache(1024)

    def _load_store(self) -> crypto.X509Store:
        store = crypto.X509Store()
        if self._x509_strict:
            store.set_flags(crypto.X509StoreFlags.X509_STRICT)
        store.load_locations(self._ca_file)
        return store

    def reload(self) -> None:
        """Called when the TLS files change, so CA rotation applies here too."""
        self._store = self._load_store()
        self._verified.clear()

    def verify(self, der: bytes, chain: list[bytes]) -> ClientIdentity:
        key = hashlib.sha256(der + b"".join(chain)).digest()
        now = time.time()
        cached = self._verified.get(key, now)
        if cached is not None:
            return cached
        try:
            leaf = x509.load_der_x509_certificate(der)
            intermediates = [
                crypto.X509.from_cryptography(x509.load_der_x509_certificate(c)) for c in chain
            ]
        except ValueError:
            raise _malformed("not a DER certificate") from None
        context = crypto.X509StoreContext(
            self._store, crypto.X509.from_cryptography(leaf), chain=intermediates or None
        )
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError:
            raise AuthError(
                Reason.INVALID_CLIENT_CERT, "forwarded client certificate did not verify"
            ) from None
        # The handshake checks the clientAuth purpose; X509Store has no purpose, so check here.
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            pass
        else:
            if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
                raise AuthError(
                    Reason.INVALID_CLIENT_CERT, "forwarded certificate is not for client auth"
                )
        identity = identity_from_der(der)
        expires = min(now + VERIFIED_TTL, leaf.not_valid_after_utc.timestamp())
        self._verified.put(key, identity, expires)
        return identity

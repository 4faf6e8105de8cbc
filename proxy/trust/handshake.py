"""Why a TLS handshake on the mTLS listener failed: a closed set of reasons, counted and logged.

Runs once per connection, at handshake time, never per request. The classification reads
OpenSSL's verify code (X509_V_ERR_*, from the verify callback, proxy/trust/verify.py) and
error reason. Every refused certificate is named on the log line (subject, issuer, serial,
x5t#S256, notAfter and the depth that failed), never logged whole; the line is rate-limited
per (reason, certificate thumbprint), or per (reason, peer address) when there is no
certificate, so two clients behind one address each get their line.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from cryptography import x509
from OpenSSL import SSL

from proxy import metrics
from proxy.errors import HandshakeFailure as FailureReason
from proxy.trust.identity import ClientIdentity, compute_thumbprint, identity_from_certificate
from proxy.trust.revocation import CRLSet, Status
from proxy.trust.verify import ChainFailure

log = logging.getLogger("certbound.tls")

LOG_INTERVAL = 60.0  # seconds between two lines for the same (reason, certificate or peer)
_MAX_REMEMBERED = 4096  # (reason, certificate or peer) pairs remembered for rate limiting


# X509_V_ERR_* numbers of OpenSSL 3 (include/openssl/x509_vfy.h), checked against a real
# handshake in tests/test_handshake_failures.py.
_VERIFY_CODES: dict[int, FailureReason] = {
    2: FailureReason.UNKNOWN_CA,  # UNABLE_TO_GET_ISSUER_CERT
    3: FailureReason.REVOCATION_UNKNOWN,  # UNABLE_TO_GET_CRL
    7: FailureReason.UNKNOWN_CA,  # CERT_SIGNATURE_FAILURE: names a trusted CA, not signed by it
    9: FailureReason.NOT_YET_VALID,  # CERT_NOT_YET_VALID
    10: FailureReason.EXPIRED,  # CERT_HAS_EXPIRED
    12: FailureReason.REVOCATION_UNKNOWN,  # CRL_HAS_EXPIRED
    18: FailureReason.UNKNOWN_CA,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: FailureReason.UNKNOWN_CA,  # SELF_SIGNED_CERT_IN_CHAIN
    20: FailureReason.UNKNOWN_CA,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: FailureReason.UNKNOWN_CA,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    22: FailureReason.CHAIN_TOO_LONG,  # CERT_CHAIN_TOO_LONG: beyond tls.verify_depth
    23: FailureReason.REVOKED,  # CERT_REVOKED
    26: FailureReason.BAD_PURPOSE,  # INVALID_PURPOSE (no clientAuth in the EKU)
    27: FailureReason.UNKNOWN_CA,  # CERT_UNTRUSTED
}
# 80-94: the checks only X509_V_FLAG_X509_STRICT makes (PATHLEN_INVALID_FOR_NON_CA ..
# EC_KEY_EXPLICIT_PARAMS), among them 85 MISSING_AUTHORITY_KEY_IDENTIFIER and 86
# MISSING_SUBJECT_KEY_IDENTIFIER.
_VERIFY_CODES.update(dict.fromkeys(range(80, 95), FailureReason.STRICT_VIOLATION))

# OpenSSL's reason texts (ERR_reason_error_string) for a client speaking a version refused.
_PROTOCOL_REASONS = frozenset(
    {
        "unsupported protocol",
        "wrong version number",
        "version too low",
        "no protocols available",
        "tlsv1 alert protocol version",
        "inappropriate fallback",
        "tlsv1 alert inappropriate fallback",
    }
)


def verify_code_reason(code: int) -> FailureReason:
    """The reason for an OpenSSL verify code (X509_V_ERR_*)."""
    return _VERIFY_CODES.get(code, FailureReason.OTHER)


def openssl_reason(exc: SSL.Error) -> str:
    """The last reason text of a pyOpenSSL error, e.g. 'peer did not return a certificate'."""
    errors = exc.args[0] if exc.args else None
    if isinstance(errors, list) and errors and isinstance(errors[-1], tuple):
        return str(errors[-1][-1])
    return type(exc).__name__


def classify(exc: SSL.Error, chain: ChainFailure | None) -> tuple[FailureReason, str]:
    """(reason, what OpenSSL said) for a handshake that raised; `chain` is what the verify
    callback recorded on this connection."""
    if chain is not None:
        return verify_code_reason(chain.code), f"{chain.message} (X509_V_ERR {chain.code})"
    reason = openssl_reason(exc)
    if reason == "peer did not return a certificate":
        return FailureReason.NO_CERTIFICATE, "the client sent no certificate"
    if reason in _PROTOCOL_REASONS:
        return FailureReason.PROTOCOL_VERSION, f"TLS version not accepted ({reason})"
    if "alert" in reason:
        return FailureReason.OTHER, f"the client aborted the handshake ({reason})"
    return FailureReason.OTHER, reason


class _RateLimit:
    """At most one line per key per interval; memory bounded by forgetting old keys."""

    def __init__(self, interval: float, size: int) -> None:
        self._interval = interval
        self._size = size
        self._last: dict[tuple[FailureReason, str], float] = {}

    def allows(self, key: tuple[FailureReason, str], now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) >= self._size:
            cutoff = now - self._interval
            self._last = {k: t for k, t in self._last.items() if t > cutoff}
            if len(self._last) >= self._size:
                return False  # a flood from many addresses: counted, not logged
        self._last[key] = now
        return True


_limit = _RateLimit(LOG_INTERVAL, _MAX_REMEMBERED)


def refused(
    reason: FailureReason,
    peer: str,
    detail: str,
    certificate: bytes = b"",
    depth: int | None = None,
) -> None:
    """Count one failed handshake and log it, naming the certificate refused (its DER, when
    there is one), unless this (reason, certificate) or (reason, peer) was logged lately."""
    metrics.TLS_HANDSHAKE_FAILURES.labels(reason=reason.value).inc()
    key = compute_thumbprint(certificate) if certificate else peer
    if _limit.allows((reason, key), time.monotonic()):
        named = f" {describe(certificate)}" if certificate else ""
        at = f" depth={depth}" if depth is not None else ""
        log.info(
            "TLS handshake refused: reason=%s peer=%s: %s%s%s",
            reason.value,
            peer,
            detail,
            named,
            at,
        )


def refused_chain(exc: SSL.Error, chain: ChainFailure | None, peer: str) -> None:
    """A handshake OpenSSL ended: counted, and logged with the certificate it refused."""
    reason, detail = classify(exc, chain)
    if chain is None:
        refused(reason, peer, detail)
    else:
        refused(reason, peer, detail, chain.der, chain.depth)


def describe(der: bytes) -> str:
    """What a log line may say about a certificate: names, serial, thumbprint, notAfter; never
    a key. Each field on its own, so a certificate cryptography cannot fully read is named
    as far as it can be."""
    try:
        certificate: x509.Certificate | None = x509.load_der_x509_certificate(der)
    except ValueError:
        certificate = None
    fields = {"subject": "?", "issuer": "?", "serial": "?", "notAfter": "?"}
    for name in fields:
        try:
            fields[name] = _field(certificate, name) if certificate is not None else "?"
        except ValueError:
            pass
    named = " ".join(f"{name}={value}" for name, value in fields.items())
    return f"{named} x5t#S256={compute_thumbprint(der)}"


def _field(certificate: x509.Certificate, name: str) -> str:
    if name == "subject":
        return repr(certificate.subject.rfc4514_string())
    if name == "issuer":
        return repr(certificate.issuer.rfc4514_string())
    if name == "serial":
        return f"{certificate.serial_number:x}"
    return certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


# cryptography parses extensions on first use; these are what it raises on ones OpenSSL took.
_UNREADABLE = (
    ValueError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)


def read_certificate(der: bytes) -> tuple[x509.Certificate, ClientIdentity] | None:
    """The presented certificate and the identity it gives, or None when cryptography cannot
    read it (then refuse it as unparseable_certificate)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        _ = certificate.extensions  # all of them now, so nothing later meets a parse error
        certificate.issuer.rfc4514_string()
        return certificate, identity_from_certificate(certificate, der)
    except _UNREADABLE:
        return None


def observe_validity(certificate: x509.Certificate, now: dt.datetime) -> None:
    """Time left, and the fraction of its lifetime used, of a presented certificate."""
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    metrics.CLIENT_CERT_REMAINING.observe((not_after - now).total_seconds())
    lifetime = (not_after - not_before).total_seconds()
    if lifetime > 0:  # a certificate valid for no time at all fails the handshake anyway
        metrics.CLIENT_CERT_LIFETIME_ELAPSED.observe((now - not_before).total_seconds() / lifetime)


def admit(
    der: bytes, peer: str, crls: CRLSet | None, allow_unknown: bool
) -> tuple[x509.Certificate, ClientIdentity] | None:
    """After every handshake, full or resumed from a ticket: the certificate must be readable,
    inside its validity period now (a resumed session's was checked when it was issued) and
    not revoked. None: the connection is closed before a request is read."""
    read = read_certificate(der)
    if read is None:
        refused(
            FailureReason.UNPARSEABLE_CERTIFICATE,
            peer,
            "OpenSSL accepted the certificate but it cannot be read (a malformed or "
            "duplicated extension)",
            der,
        )
        return None
    certificate, _ = read
    now = dt.datetime.now(dt.UTC)
    if now < certificate.not_valid_before_utc:
        refused(FailureReason.NOT_YET_VALID, peer, "certificate is not yet valid", der, 0)
        return None
    remaining = (certificate.not_valid_after_utc - now).total_seconds()
    if remaining < 0:
        refused(
            FailureReason.EXPIRED, peer, "certificate has expired (on a resumed session)", der, 0
        )
        return None
    observe_validity(certificate, now)
    if crls is None:
        return read
    verdict = crls.check(certificate, now)
    metrics.REVOCATION_CHECKS.labels(result=verdict.status.value).inc()
    if verdict.status is Status.GOOD:
        return read
    if verdict.status is Status.REVOKED:
        refused(FailureReason.REVOKED, peer, verdict.why, der)
        return None
    if allow_unknown:
        if _limit.allows(
            (FailureReason.REVOCATION_UNKNOWN, compute_thumbprint(der)), time.monotonic()
        ):
            log.warning(
                "revocation status unknown, accepted because tls.revocation_unavailable is "
                "allow: peer=%s: %s %s",
                peer,
                verdict.why,
                describe(der),
            )
        return read
    refused(FailureReason.REVOCATION_UNKNOWN, peer, verdict.why, der)
    return None


def reset_rate_limit() -> None:
    """For tests: forget which lines were logged."""
    _limit._last.clear()

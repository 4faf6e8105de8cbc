"""Why a TLS handshake on the mTLS listener failed: a closed set of reasons, counted and logged.

Runs once per connection, at handshake time, never per request. The classification reads
OpenSSL's verify code (X509_V_ERR_*) and error reason; the log line is rate-limited per reason
and peer address. Python's ssl module has no verify callback, so when OpenSSL refuses a chain
the presented certificate is not available here: the line carries OpenSSL's verify message and
the peer. Refusals decided after the handshake (revocation) have the certificate and log its
subject, issuer, serial and thumbprint.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time

from cryptography import x509

from proxy import metrics
from proxy.errors import HandshakeFailure as FailureReason
from proxy.trust.identity import compute_thumbprint
from proxy.trust.revocation import CRLSet, Status

log = logging.getLogger("certbound.tls")

LOG_INTERVAL = 60.0  # seconds between two lines for the same (reason, peer)
_MAX_REMEMBERED = 4096  # (reason, peer) pairs remembered for rate limiting


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
    23: FailureReason.REVOKED,  # CERT_REVOKED
    26: FailureReason.BAD_PURPOSE,  # INVALID_PURPOSE (no clientAuth in the EKU)
    27: FailureReason.UNKNOWN_CA,  # CERT_UNTRUSTED
}
# 80-94: the checks only X509_V_FLAG_X509_STRICT makes (PATHLEN_INVALID_FOR_NON_CA ..
# EC_KEY_EXPLICIT_PARAMS), among them 85 MISSING_AUTHORITY_KEY_IDENTIFIER and 86
# MISSING_SUBJECT_KEY_IDENTIFIER.
_VERIFY_CODES.update(dict.fromkeys(range(80, 95), FailureReason.STRICT_VIOLATION))

_PROTOCOL_REASONS = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "WRONG_VERSION_NUMBER",
        "VERSION_TOO_LOW",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "INAPPROPRIATE_FALLBACK",
        "TLSV1_ALERT_INAPPROPRIATE_FALLBACK",
    }
)


def verify_code_reason(code: int) -> FailureReason:
    """The reason for an OpenSSL verify code (X509_V_ERR_*)."""
    return _VERIFY_CODES.get(code, FailureReason.OTHER)


def classify(exc: ssl.SSLError) -> tuple[FailureReason, str]:
    """(reason, what OpenSSL said) for a handshake that raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        message = f"{exc.verify_message} (X509_V_ERR {code})"
        return verify_code_reason(code), message
    reason = exc.reason or type(exc).__name__
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return FailureReason.NO_CERTIFICATE, "the client sent no certificate"
    if reason in _PROTOCOL_REASONS:
        return FailureReason.PROTOCOL_VERSION, f"TLS version not accepted ({reason})"
    if "ALERT" in reason:
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


def refused(reason: FailureReason, peer: str, detail: str, certificate: str = "") -> None:
    """Count one failed handshake and log it, unless this (reason, peer) was logged lately."""
    metrics.TLS_HANDSHAKE_FAILURES.labels(reason=reason.value).inc()
    if _limit.allows((reason, peer), time.monotonic()):
        extra = f" {certificate}" if certificate else ""
        log.info(
            "TLS handshake refused: reason=%s peer=%s: %s%s", reason.value, peer, detail, extra
        )


def describe(certificate: x509.Certificate, der: bytes) -> str:
    """What a log line may say about a certificate: names, serial, thumbprint; no key."""
    return (
        f"subject={certificate.subject.rfc4514_string()!r} "
        f"issuer={certificate.issuer.rfc4514_string()!r} "
        f"serial={certificate.serial_number:x} x5t#S256={compute_thumbprint(der)}"
    )


def observe_validity(certificate: x509.Certificate, now: dt.datetime) -> None:
    """Time left, and the fraction of its lifetime used, of a presented certificate."""
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    metrics.CLIENT_CERT_REMAINING.observe((not_after - now).total_seconds())
    lifetime = (not_after - not_before).total_seconds()
    if lifetime > 0:  # a certificate valid for no time at all fails the handshake anyway
        metrics.CLIENT_CERT_LIFETIME_ELAPSED.observe((now - not_before).total_seconds() / lifetime)


def admit(
    certificate: x509.Certificate, der: bytes, peer: str, crls: CRLSet | None, allow_unknown: bool
) -> bool:
    """Once per connection, after a successful handshake: observe the presented certificate's
    validity and check its revocation. False: close before reading a request."""
    now = dt.datetime.now(dt.UTC)
    observe_validity(certificate, now)
    if crls is None:
        return True
    verdict = crls.check(certificate, now)
    metrics.REVOCATION_CHECKS.labels(result=verdict.status.value).inc()
    if verdict.status is Status.GOOD:
        return True
    if verdict.status is Status.REVOKED:
        refused(FailureReason.REVOKED, peer, verdict.why, describe(certificate, der))
        return False
    if allow_unknown:
        if _limit.allows((FailureReason.REVOCATION_UNKNOWN, peer), time.monotonic()):
            log.warning(
                "revocation status unknown, accepted because tls.revocation_unavailable is "
                "allow: peer=%s: %s %s",
                peer,
                verdict.why,
                describe(certificate, der),
            )
        return True
    refused(FailureReason.REVOCATION_UNKNOWN, peer, verdict.why, describe(certificate, der))
    return False


def reset_rate_limit() -> None:
    """For tests: forget which lines were logged."""
    _limit._last.clear()

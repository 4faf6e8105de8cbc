"""`certbound explain --cert`: check a client certificate as the mTLS listener would, and say
what to do about each finding. Path validation is OpenSSL's (through pyOpenSSL's X509Store,
strict only with tls.x509_strict), the clientAuth purpose is checked as the handshake does,
revocation against the configured CRL files as the connection does after the handshake.
No I/O besides reading the configured files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto

from proxy.errors import HandshakeFailure
from proxy.settings import TLSSettings
from proxy.trust.handshake import verify_code_reason
from proxy.trust.revocation import RevocationConfigError, Status
from proxy.trust.tls import load_revocation

FIXES: dict[HandshakeFailure, str] = {
    HandshakeFailure.UNKNOWN_CA: "it does not chain to tls.client_ca_file: add its issuing CA "
    "(and any intermediates) to that bundle, or issue it from a CA already there",
    HandshakeFailure.EXPIRED: "renew it; tokens bound to it must be reissued for the new "
    "certificate's thumbprint",
    HandshakeFailure.NOT_YET_VALID: "its notBefore lies ahead: check the issuing host's clock",
    HandshakeFailure.BAD_PURPOSE: "reissue it with extendedKeyUsage clientAuth (or no EKU)",
    HandshakeFailure.STRICT_VIOLATION: "reissue it with the missing extension, or leave "
    "tls.x509_strict off",
    HandshakeFailure.REVOKED: "it is on its CA's CRL: issue the client a new certificate",
    HandshakeFailure.REVOCATION_UNKNOWN: "no current CRL for its issuer: update tls.crl_files, "
    "or accept unknown status with tls.revocation_unavailable: allow",
    HandshakeFailure.CHAIN_TOO_LONG: "its chain has more intermediates than tls.verify_depth: "
    "raise tls.verify_depth, or put an intermediate in tls.client_ca_file",
    HandshakeFailure.UNPARSEABLE_CERTIFICATE: "it has a malformed or duplicated extension: "
    "reissue it",
}


@dataclass(frozen=True, slots=True)
class CertificateVerdict:
    refusal: HandshakeFailure | None  # None: the listener accepts it
    why: str


def check_certificate(
    certificate: x509.Certificate,
    tls: TLSSettings,
    out: Callable[[str], None],
    now: dt.datetime | None = None,
) -> CertificateVerdict:
    """Print each check of the listener's; return whether (and why) it would refuse."""
    now = now or dt.datetime.now(dt.UTC)
    left = certificate.not_valid_after_utc - now
    out(f"   issuer      {certificate.issuer.rfc4514_string()}")
    out(f"   serial      {certificate.serial_number:x}")
    out(
        f"   valid       {certificate.not_valid_before_utc.isoformat()} to "
        f"{certificate.not_valid_after_utc.isoformat()} ({left.days} days left)"
    )
    failure = _verify_chain(certificate, tls.client_ca_file, strict=tls.x509_strict)
    if failure is not None:
        return _refused(*failure, out)
    out(f"   chain       ok: chains to {tls.client_ca_file}, within its dates")
    if not tls.x509_strict:
        strict = _verify_chain(certificate, tls.client_ca_file, strict=True)
        if strict is not None:
            out(f"   strictness  {strict[1]}: accepted (refused only with tls.x509_strict)")
    if not _allows_client_auth(certificate):
        return _refused(
            HandshakeFailure.BAD_PURPOSE, "extendedKeyUsage does not include clientAuth", out
        )
    out("   purpose     ok: clientAuth (or no extendedKeyUsage)")
    fetched_note = (
        "   revocation  tls.fetch_crls: the running proxy also checks the CRLs it downloads "
        "(not downloaded here; see certbound_crl_fetch_* metrics)"
    )
    if not tls.crl_files:
        out(
            fetched_note
            if tls.fetch_crls
            else "   revocation  not checked: no tls.crl_files configured"
        )
        return CertificateVerdict(None, "accepted")
    try:
        crls = load_revocation(tls)
    except RevocationConfigError as exc:
        out(f"   revocation  cannot load tls.crl_files: {exc}")
        return CertificateVerdict(None, "CRL files unusable")
    assert crls is not None
    verdict = crls.check(certificate, now)
    if verdict.status is Status.REVOKED:
        return _refused(HandshakeFailure.REVOKED, verdict.why, out)
    if verdict.status is not Status.GOOD:
        if tls.fetch_crls:
            out(f"   revocation  {verdict.why}")
            out(fetched_note)
            return CertificateVerdict(None, "accepted unless a fetched CRL lists it")
        if tls.revocation_unavailable == "allow":
            out(f"   revocation  {verdict.why}: accepted (tls.revocation_unavailable is allow)")
            return CertificateVerdict(None, "accepted with unknown revocation status")
        return _refused(HandshakeFailure.REVOCATION_UNKNOWN, verdict.why, out)
    out("   revocation  ok: not on its CA's CRL")
    return CertificateVerdict(None, "accepted")


def _refused(reason: HandshakeFailure, why: str, out: Callable[[str], None]) -> CertificateVerdict:
    out(f"   -> the listener refuses it: {reason.value}: {why}")
    fix = FIXES.get(reason)
    if fix:
        out(f"   fix: {fix}")
    return CertificateVerdict(reason, why)


def _verify_chain(
    certificate: x509.Certificate, ca_file: str, *, strict: bool
) -> tuple[HandshakeFailure, str] | None:
    store = crypto.X509Store()
    if strict:
        store.set_flags(crypto.X509StoreFlags.X509_STRICT)
    store.load_locations(ca_file)
    context = crypto.X509StoreContext(store, crypto.X509.from_cryptography(certificate))
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as exc:
        code, _depth, message = exc.errors[0], exc.errors[1], str(exc.errors[2])
        return verify_code_reason(int(code)), f"{message} (OpenSSL verify code {code})"
    return None


def _allows_client_auth(certificate: x509.Certificate) -> bool:
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    # As OpenSSL's SSL-client purpose: anyExtendedKeyUsage alone does not count.
    return ExtendedKeyUsageOID.CLIENT_AUTH in eku

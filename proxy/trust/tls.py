"""The mTLS server context: serving certificate, client CA bundle, protocol floor.

`ServerTLS.current` is the context every new connection's handshake uses; it is rebuilt when
the files on disk change, so Kubernetes secret rotation needs no restart. A broken new file
is refused and the old context stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from proxy import metrics
from proxy.settings import TLSSettings
from proxy.trust.crlfetch import distribution_points
from proxy.trust.revocation import CRLSet, IssuerCRL, RevocationConfigError, load_crls

log = logging.getLogger("certbound.tls")

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(Exception):
    """A TLS file is missing or unusable; the text names the file, never its content."""


def build_server_context(
    settings: TLSSettings, client_cert_optional: bool = False
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS[settings.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # CERT_REQUIRED: no certificate, no handshake. OpenSSL checks the chain up to the bundle,
    # validity dates and the clientAuth purpose (a serverAuth-only cert is refused): RFC 5280
    # path validation. VERIFY_X509_STRICT adds checks RFC 5280 leaves to issuers (a CA's
    # Subject Key Identifier, a leaf's Authority Key Identifier, ...) that older private CAs
    # and `openssl x509 -req` without extensions do not meet; nginx, Envoy and Go accept
    # such chains, so strictness is opt-in (tls.x509_strict).
    # With client_cert.source: header the certificate comes from a trusted ingress instead, and
    # the ingress may or may not present its own (checked against trusted_proxy_subjects).
    ctx.verify_mode = ssl.CERT_OPTIONAL if client_cert_optional else ssl.CERT_REQUIRED
    if settings.x509_strict:
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    else:
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"tls.cert_file/tls.key_file: cannot load {settings.cert_file}: {_why(exc)}"
        ) from None
    try:
        ctx.load_verify_locations(cafile=settings.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"tls.client_ca_file: cannot load {settings.client_ca_file}: {_why(exc)}"
        ) from None
    if not ctx.get_ca_certs():
        raise TLSConfigError(f"tls.client_ca_file: no CA certificate in {settings.client_ca_file}")
    ctx.set_alpn_protocols(["http/1.1"])
    # TLS 1.3 session tickets: OpenSSL issues two after every full handshake, which costs a
    # quarter of the handshake's CPU here, for clients that mostly never resume. Off by
    # default, so every connection's certificate is also verified afresh.
    ctx.num_tickets = settings.session_tickets
    if settings.session_tickets == 0:
        ctx.options |= ssl.OP_NO_TICKET  # TLS 1.2 tickets too
    return ctx


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


def record_expiry(settings: TLSSettings) -> None:
    """Export not-after timestamps of the serving cert and each client CA."""
    try:
        serving = x509.load_pem_x509_certificates(Path(settings.cert_file).read_bytes())
        cas = x509.load_pem_x509_certificates(Path(settings.client_ca_file).read_bytes())
    except (OSError, ValueError):
        return
    metrics.CERT_NOT_AFTER.clear()
    if serving:
        metrics.CERT_NOT_AFTER.labels(role="serving", index="0").set(
            serving[0].not_valid_after_utc.timestamp()
        )
    for index, ca in enumerate(cas):
        metrics.CERT_NOT_AFTER.labels(role="client_ca", index=str(index)).set(
            ca.not_valid_after_utc.timestamp()
        )


def load_revocation(settings: TLSSettings) -> CRLSet | None:
    """The CRLs of tls.crl_files, each verified against its CA; None when revocation is not
    checked (no crl_files and no fetch_crls)."""
    if not settings.crl_files and not settings.fetch_crls:
        return None
    try:
        return load_crls(settings.crl_files, settings.client_ca_file)
    except RevocationConfigError as exc:
        raise TLSConfigError(str(exc)) from None


def crl_sources(settings: TLSSettings) -> list[str]:
    """The http CRL Distribution Points of the client CAs, for tls.fetch_crls."""
    if not settings.fetch_crls:
        return []
    try:
        cas = x509.load_pem_x509_certificates(Path(settings.client_ca_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"tls.client_ca_file: cannot read it: {_why(exc)}") from None
    urls, ignored = distribution_points(cas)
    for url in ignored:
        log.warning("tls.fetch_crls: %s is not an http:// distribution point; not fetched", url)
    if not urls:
        raise TLSConfigError(
            "tls.fetch_crls: no CA in tls.client_ca_file names an http:// CRL distribution "
            "point (use tls.crl_files, or turn tls.fetch_crls off)"
        )
    return urls


def record_crls(crls: CRLSet | None) -> None:
    metrics.CRL_LAST_UPDATE.clear()
    metrics.CRL_NEXT_UPDATE.clear()
    for crl in crls.crls if crls is not None else ():
        metrics.CRL_LAST_UPDATE.labels(index=str(crl.index)).set(crl.last_update.timestamp())
        if crl.next_update is not None:
            metrics.CRL_NEXT_UPDATE.labels(index=str(crl.index)).set(crl.next_update.timestamp())


class ServerTLS:
    """The context new handshakes use, reloaded when the files change."""

    def __init__(self, settings: TLSSettings, client_cert_optional: bool = False) -> None:
        self._settings = settings
        self._optional = client_cert_optional
        self.current = build_server_context(settings, client_cert_optional)
        # Revocation is checked in Python after the handshake (proxy/handshake.py), not by
        # OpenSSL: a stale CRL can then be allowed (tls.revocation_unavailable), and a refusal
        # is logged with the certificate it refused, which OpenSSL's path gives us no way to see.
        self._from_files = load_revocation(settings)
        self._fetched: tuple[IssuerCRL, ...] = ()  # tls.fetch_crls, kept across file reloads
        self.revocation = self._from_files
        self.allow_unknown_revocation = settings.revocation_unavailable == "allow"
        self._stamp = self._file_stamp()
        self.on_reload: list[Callable[[], None]] = []
        record_expiry(settings)
        record_crls(self.revocation)
        checks = self._from_files is not None
        metrics.REVOCATION_UNAVAILABLE_ALLOWED.set(
            1 if self.allow_unknown_revocation and checks else 0
        )
        if self.allow_unknown_revocation and checks:
            log.warning(
                "tls.revocation_unavailable is allow: a client certificate whose revocation "
                "status is unknown (no CRL for its issuer, or a CRL past nextUpdate) is ACCEPTED"
            )

    def crls_fetched(self, fetched: tuple[IssuerCRL, ...]) -> None:
        """tls.fetch_crls brought a new CRL: new connections check against it."""
        self._fetched = fetched
        self._combine()

    def _combine(self) -> None:
        files = self._from_files
        if files is None:
            self.revocation = None
        else:
            self.revocation = CRLSet(files.crls + self._fetched) if self._fetched else files
        record_crls(self.revocation)

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for name in (
            self._settings.cert_file,
            self._settings.key_file,
            self._settings.client_ca_file,
            *self._settings.crl_files,
        ):
            try:
                # realpath: Kubernetes swaps a ..data symlink; the target's identity changes.
                st = os.stat(os.path.realpath(name))
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    async def watch(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass
            stamp = await asyncio.to_thread(self._file_stamp)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                current = await asyncio.to_thread(
                    build_server_context, self._settings, self._optional
                )
                revocation = await asyncio.to_thread(load_revocation, self._settings)
            except TLSConfigError as exc:
                log.error("TLS files changed but cannot be used; keeping the old ones: %s", exc)
                continue
            self.current, self._from_files = current, revocation
            self._combine()
            await asyncio.to_thread(record_expiry, self._settings)
            for callback in self.on_reload:
                await asyncio.to_thread(callback)
            log.info(
                "TLS files reloaded: new handshakes use the new certificate, CA bundle and CRLs"
            )

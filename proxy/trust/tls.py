"""The mTLS server context: serving certificate, client CA bundle, profile, verify depth.

`ServerTLS.current` is the pyOpenSSL context every new connection's handshake uses; it is
rebuilt when the files on disk change, so Kubernetes secret rotation needs no restart. A broken
new file is refused and the old context stays. pyOpenSSL rather than the standard library's
`ssl`: only it has the verify callback (a refused certificate is named), the session cache
mode, the CA names sent in the CertificateRequest and the verify depth.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _openssl

from proxy import metrics
from proxy.settings import TLSSettings
from proxy.trust.crlfetch import distribution_points
from proxy.trust.profiles import PROFILES, lowest_version
from proxy.trust.revocation import CRLSet, IssuerCRL, RevocationConfigError, load_crls
from proxy.trust.verify import on_verify

log = logging.getLogger("certbound.tls")

_CONTEXT_FILES = 3  # cert_file, key_file, client_ca_file: the first stamps of _file_stamp
_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_ALPN = b"http/1.1"


class TLSConfigError(Exception):
    """A TLS file is missing or unusable; the text names the file, never its content."""


def build_server_context(settings: TLSSettings, client_cert_optional: bool = False) -> SSL.Context:
    profile = PROFILES[settings.profile]
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_VERSIONS[lowest_version(settings.profile, settings.min_version)])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    # OpenSSL's record buffers go back while a connection is idle (8 KB of an idle TLS 1.3
    # connection's 36 KB, measured).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if profile.tls12_suites:
        ctx.set_cipher_list(profile.tls12_suites.encode())
    ctx.set_tls13_ciphersuites(profile.tls13_suites.encode())
    # pyOpenSSL has no public call for the key-exchange groups; this is its own binding.
    if _openssl.SSL_CTX_set1_curves_list(ctx._context, profile.groups.encode()) != 1:
        raise TLSConfigError(f"tls.profile: OpenSSL refused the groups {profile.groups}")
    # No server-side session cache: nothing is held per session (a TLS 1.2 session ID resumes
    # nothing), so an expired certificate cannot come back through one, and memory does not
    # grow with reconnects. Resumption exists only through tls.session_tickets, and a resumed
    # connection goes through the same post-handshake checks (handshake.admit).
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if settings.session_tickets == 0:
        ctx.set_options(SSL.OP_NO_TICKET)
    # Verification: OpenSSL checks the chain up to the bundle, validity dates and the
    # clientAuth purpose (RFC 5280 path validation); the callback only records what it
    # refused, to name it. With client_cert.source: header the certificate comes from a
    # trusted ingress instead, which may or may not present its own.
    mode = (
        SSL.VERIFY_PEER
        if client_cert_optional
        else SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    )
    ctx.set_verify(mode, on_verify)
    ctx.set_verify_depth(settings.verify_depth)
    # VERIFY_X509_STRICT adds checks RFC 5280 leaves to issuers (a CA's Subject Key
    # Identifier, a leaf's Authority Key Identifier, ...) that older private CAs and
    # `openssl x509 -req` without extensions do not meet; nginx, Envoy and Go accept such
    # chains, so strictness is opt-in (tls.x509_strict).
    if settings.x509_strict:
        ctx.get_cert_store().set_flags(crypto.X509StoreFlags.X509_STRICT)  # type: ignore[union-attr]
    try:
        ctx.use_certificate_chain_file(settings.cert_file.encode())
        ctx.use_privatekey_file(settings.key_file.encode())
        ctx.check_privatekey()
    except (OSError, SSL.Error) as exc:
        raise TLSConfigError(
            f"tls.cert_file/tls.key_file: cannot load {settings.cert_file}: {_why(exc)}"
        ) from None
    try:
        bundle = Path(settings.client_ca_file).read_bytes()
        try:
            cas = x509.load_pem_x509_certificates(bundle)
        except ValueError:
            cas = []
        if not cas:
            raise TLSConfigError(
                f"tls.client_ca_file: no CA certificate in {settings.client_ca_file}"
            )
        ctx.load_verify_locations(settings.client_ca_file.encode())
        # The CertificateRequest names these CAs, so a client holding several certificates
        # presents the one this listener accepts.
        ctx.load_client_ca(settings.client_ca_file.encode())
    except (OSError, SSL.Error) as exc:
        raise TLSConfigError(
            f"tls.client_ca_file: cannot load {settings.client_ca_file}: {_why(exc)}"
        ) from None
    # OpenSSL refuses to resume a verified session without a session ID context; tying it to
    # what verification depends on means a ticket from before a CA change never resumes.
    context_id = f"{settings.profile}|{settings.verify_depth}|{settings.x509_strict}".encode()
    ctx.set_session_id(hashlib.sha256(bundle + context_id).digest())
    ctx.set_alpn_select_callback(_select_alpn)
    return ctx


def _select_alpn(_: SSL.Connection, offered: list[bytes]) -> Any:  # bytes or pyOpenSSL's marker
    # No overlap (a client offering h2 only): the handshake goes on without ALPN, as before.
    return _ALPN if _ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _why(exc: Exception) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        return str(exc.args[0][-1][-1])  # OpenSSL's reason text, e.g. "no such file"
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
        # Revocation is checked in Python after the handshake (trust/handshake.py), not by
        # OpenSSL: a stale CRL can then be allowed (tls.revocation_unavailable), and a refusal
        # is logged with the certificate it refused.
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
            # Only new CRLs: the context, and the session tickets it issued, stay; a resumed
            # session meets the new CRLs after its handshake like any other.
            keep_context = stamp[:_CONTEXT_FILES] == self._stamp[:_CONTEXT_FILES]
            self._stamp = stamp
            try:
                current = self.current
                if not keep_context:
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

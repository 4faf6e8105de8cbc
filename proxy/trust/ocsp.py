"""tls.ocsp: leaf: ask the OCSP responder named in the client certificate's Authority
Information Access, once per connection, and cache the answer by (issuer, serial).

The question starts when the handshake completes and runs beside the connection; the
connection's first request waits for it (proxy/dataplane/exchange.py), later ones read the
settled state. Answers are verified (RFC 6960 §3.2: signed by the issuer, or by a responder
certificate the issuer gave the OCSPSigning EKU) before they count. Not done: nonces (answers
are cached anyway), intermediates, and responders over https.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from proxy import metrics
from proxy.errors import AuthError, Reason

log = logging.getLogger("certbound.tls")

TIMEOUT = 5.0  # seconds for one question, connect to last byte
MAX_ANSWER_BYTES = 64 * 1024
CACHE_SIZE = 10_000
LEEWAY = dt.timedelta(minutes=5)  # clock skew allowed on thisUpdate / nextUpdate


class OCSPError(Exception):
    """No usable answer; the text says why."""


def responder_url(certificate: x509.Certificate) -> str | None:
    try:
        access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return None
    for description in access.value:
        location = description.access_location
        if (
            description.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(location, x509.UniformResourceIdentifier)
            and location.value.lower().startswith("http://")
        ):
            return location.value
    return None


def _verify(signer: x509.Certificate, signature: bytes, data: bytes, algorithm: object) -> bool:
    key = signer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
            algorithm, hashes.HashAlgorithm
        ):
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and isinstance(algorithm, hashes.HashAlgorithm):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _names(response: ocsp.OCSPResponse, certificate: x509.Certificate) -> bool:
    """The response's ResponderID is this certificate (by name or by SHA-1 of its key)."""
    if response.responder_name is not None:
        return response.responder_name == certificate.subject
    digest = x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    return response.responder_key_hash == digest


def _is_signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime
) -> x509.Certificate:
    if _names(response, issuer):
        return issuer
    for candidate in response.certificates:
        if not _names(response, candidate) or not _is_signed_by(candidate, issuer):
            continue
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            raise OCSPError("the delegated responder certificate is outside its validity")
        try:
            usage = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage:
            return candidate
        raise OCSPError("the responder certificate lacks the OCSPSigning EKU")
    raise OCSPError("signed neither by the issuer nor by a responder certificate it issued")


def read_answer(
    der: bytes, certificate: x509.Certificate, issuer: x509.Certificate, now: dt.datetime
) -> ocsp.OCSPResponse:
    """A parsed, verified, current answer about `certificate`. Raises OCSPError."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OCSPError(f"not an OCSP response: {exc}") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError(f"responder said {response.response_status.name}")
    signer = _signer(response, issuer, now)
    if not _verify(
        signer, response.signature, response.tbs_response_bytes, response.signature_hash_algorithm
    ):
        raise OCSPError("the response's signature does not verify")
    if response.serial_number != certificate.serial_number:
        raise OCSPError("the response is about another certificate")
    if response.this_update_utc > now + LEEWAY:
        raise OCSPError("thisUpdate is in the future")
    if response.next_update_utc is not None and response.next_update_utc < now - LEEWAY:
        raise OCSPError("the response is past its nextUpdate")
    return response


class OCSPChecker:
    """Questions, answers and their cache for one process."""

    def __init__(self, session: aiohttp.ClientSession, ca_file: str, allow_unknown: bool) -> None:
        self._session = session
        self._cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        self.allow_unknown = allow_unknown
        # (issuer subject DER, serial) -> (refusal or None, expiry): good and revoked answers.
        self._cache: dict[tuple[bytes, int], tuple[AuthError | None, dt.datetime]] = {}
        self._asking: dict[tuple[bytes, int], asyncio.Task[AuthError | None]] = {}

    def reload(self, ca_file: str) -> None:
        self._cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())

    def begin(
        self, certificate: x509.Certificate
    ) -> AuthError | asyncio.Task[AuthError | None] | None:
        """At handshake time: a settled answer (a refusal, or None to go on) from the cache,
        or the task asking the responder (shared by connections asking the same thing)."""
        key = (certificate.issuer.public_bytes(), certificate.serial_number)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > dt.datetime.now(dt.UTC):
            return cached[0]
        task = self._asking.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(key, certificate))
            self._asking[key] = task
        return task

    async def _ask(self, key: tuple[bytes, int], certificate: x509.Certificate) -> AuthError | None:
        try:
            return await self._answer(key, certificate)
        finally:
            self._asking.pop(key, None)

    async def _answer(
        self, key: tuple[bytes, int], certificate: x509.Certificate
    ) -> AuthError | None:
        now = dt.datetime.now(dt.UTC)
        serial = (
            f"serial={certificate.serial_number:x} issuer={certificate.issuer.rfc4514_string()!r}"
        )
        try:
            response = await self._question(certificate, now)
        except OCSPError as exc:
            metrics.OCSP_ANSWERS.labels(status="error").inc()
            return self._unavailable(f"OCSP: {exc}", serial)
        status = response.certificate_status
        if status == ocsp.OCSPCertStatus.UNKNOWN:
            metrics.OCSP_ANSWERS.labels(status="unknown").inc()
            return self._unavailable("OCSP: the responder does not know the certificate", serial)
        refusal = None
        if status == ocsp.OCSPCertStatus.REVOKED:
            metrics.OCSP_ANSWERS.labels(status="revoked").inc()
            refusal = AuthError(Reason.CLIENT_CERT_REVOKED, "the client certificate is revoked")
            log.info("OCSP: client certificate revoked: %s", serial)
        else:
            metrics.OCSP_ANSWERS.labels(status="good").inc()
        if response.next_update_utc is not None:  # without nextUpdate: ask every time
            if len(self._cache) >= CACHE_SIZE:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                while len(self._cache) >= CACHE_SIZE:
                    del self._cache[next(iter(self._cache))]
            self._cache[key] = (refusal, response.next_update_utc)
        return refusal

    async def _question(self, certificate: x509.Certificate, now: dt.datetime) -> ocsp.OCSPResponse:
        url = responder_url(certificate)
        if url is None:
            raise OCSPError("no http:// OCSP responder in the certificate's AIA")
        issuer = next((ca for ca in self._cas if _is_signed_by(certificate, ca)), None)
        if issuer is None:
            raise OCSPError("its issuer is not in tls.client_ca_file")
        # SHA-1 in the CertID: what RFC 6960 responders index by; not a signature.
        builder = ocsp.OCSPRequestBuilder()
        request = builder.add_certificate(certificate, issuer, hashes.SHA1())  # noqa: S303
        body = request.build().public_bytes(serialization.Encoding.DER)
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/ocsp-request"},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                allow_redirects=False,
            ) as answer:
                if answer.status != 200:
                    raise OCSPError(f"HTTP status {answer.status} from {url}")
                der = await answer.content.read(MAX_ANSWER_BYTES + 1)
        except TimeoutError:
            raise OCSPError(f"no answer from {url} within {TIMEOUT:g} s") from None
        except aiohttp.ClientError as exc:
            raise OCSPError(f"{url}: {type(exc).__name__}") from None
        if len(der) > MAX_ANSWER_BYTES:
            raise OCSPError(f"answer from {url} larger than {MAX_ANSWER_BYTES} bytes")
        return read_answer(der, certificate, issuer, now)

    def _unavailable(self, why: str, serial: str) -> AuthError | None:
        if self.allow_unknown:
            log.warning("%s; accepted because tls.revocation_unavailable is allow: %s", why, serial)
            return None
        log.info("%s; refused (tls.revocation_unavailable is refuse): %s", why, serial)
        return AuthError(
            Reason.CLIENT_CERT_REVOCATION_UNKNOWN,
            "the client certificate's revocation status could not be learnt",
        )

"""Certificate revocation from CRL files: parse and verify them once, then look a leaf up.

Pure apart from reading the files in `load_crls`: `CRLSet.check` takes a certificate and a
time and returns a verdict. It checks the leaf only (not intermediates), and knows no delta or
indirect CRLs. Fetching CRLs (proxy/crlfetch.py) and OCSP (proxy/ocsp.py) are not done here.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


class RevocationConfigError(Exception):
    """A CRL file cannot be used; the text names the key and the file."""


class Status(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # no CRL for the issuer, or its CRL is past nextUpdate


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    why: str


@dataclass(frozen=True, slots=True)
class IssuerCRL:
    index: int  # position in tls.crl_files, then the fetched ones: the only label metrics carry
    issuer: x509.Name
    last_update: dt.datetime
    next_update: dt.datetime | None
    revoked: frozenset[int]  # serial numbers
    name: str = ""  # for log lines: tls.crl_files[i], or the fetched CRL's URL

    @property
    def source(self) -> str:
        return self.name or f"tls.crl_files[{self.index}]"


@dataclass(frozen=True, slots=True)
class CRLSet:
    crls: tuple[IssuerCRL, ...]

    def for_issuer(self, issuer: x509.Name) -> IssuerCRL | None:
        # A handful of CRLs: a scan costs less than keeping a second index in step.
        newest = None
        for crl in self.crls:
            if crl.issuer == issuer and (newest is None or crl.last_update > newest.last_update):
                newest = crl
        return newest

    def check(self, certificate: x509.Certificate, now: dt.datetime) -> Verdict:
        crl = self.for_issuer(certificate.issuer)
        if crl is None:
            return Verdict(
                Status.UNKNOWN,
                "no CRL (tls.crl_files or tls.fetch_crls) for the certificate's issuer",
            )
        if certificate.serial_number in crl.revoked:
            return Verdict(Status.REVOKED, f"serial is on the CRL {crl.source}")
        if crl.next_update is not None and now > crl.next_update:
            return Verdict(
                Status.UNKNOWN,
                f"the CRL {crl.source} is past its nextUpdate {crl.next_update.isoformat()}",
            )
        return Verdict(Status.GOOD, f"not on the CRL {crl.source}")


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """PEM or DER; one CRL per file. Raises ValueError."""
    if data.lstrip().startswith(b"-----BEGIN"):
        if data.count(b"-----BEGIN X509 CRL-----") > 1:
            raise ValueError("more than one CRL in the file (put one CRL in each file)")
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def index_crl(
    index: int,
    crl: x509.CertificateRevocationList,
    cas: Iterable[x509.Certificate],
    name: str = "",
) -> IssuerCRL:
    """Accept a CRL only with a valid signature by a CA of the bundle that names its issuer."""
    signers = [ca for ca in cas if ca.subject == crl.issuer]
    if not signers:
        raise ValueError(f"issued by {crl.issuer.rfc4514_string()}, not a CA of the bundle")
    if not any(_signed_by(crl, ca) for ca in signers):
        raise ValueError("its signature does not verify with the issuing CA's key")
    return IssuerCRL(
        index=index,
        issuer=crl.issuer,
        last_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        revoked=frozenset(entry.serial_number for entry in crl),
        name=name,
    )


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False  # a key type that cannot sign CRLs


def load_crls(paths: Sequence[str], ca_file: str) -> CRLSet:
    """Read and verify every CRL in tls.crl_files. Raises RevocationConfigError."""
    try:
        cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise RevocationConfigError(f"tls.client_ca_file: cannot read {ca_file}: {exc}") from None
    crls = []
    for index, path in enumerate(paths):
        key = f"tls.crl_files[{index}]"
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise RevocationConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
        try:
            crls.append(index_crl(index, parse_crl(data), cas))
        except ValueError as exc:
            raise RevocationConfigError(f"{key}: {path}: not a usable CRL: {exc}") from None
    return CRLSet(tuple(crls))

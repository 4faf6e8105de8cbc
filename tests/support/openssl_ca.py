"""A certificate authority run with the `openssl` command line, as many real ones are: an
index file, serials, `openssl ca -revoke` and `openssl ca -gencrl`. Also a legacy CA made the
way old scripts make them (no key identifiers), for the compatibility tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CA_CONFIG = """\
[ca]
default_ca = ca_default
[ca_default]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = {days}
default_crl_days = 7
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = {ski}
authorityKeyIdentifier = none
{cdp}
[client_ext]
basicConstraints = CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = {eku}
subjectKeyIdentifier = {ski}
authorityKeyIdentifier = {aki}
{cdp}
{aia}
[ocsp_ext]
basicConstraints = CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = OCSPSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def openssl_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ")


@dataclass
class Leaf:
    cert: Path
    key: Path


class OpenSSLCA:
    """One CA directory. `key_identifiers=False` makes a legacy CA: no Subject Key Identifier
    on the CA, no Authority Key Identifier on what it issues."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        key_identifiers: bool = True,
        eku: str = "clientAuth",
        crl_url: str = "",
        ocsp_url: str = "",
    ) -> None:
        """`crl_url`: a CRL Distribution Point on the CA and on what it issues (a self-signed
        CA's own CRL covers both); `ocsp_url`: an AIA OCSP responder on what it issues."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "newcerts").mkdir(exist_ok=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        (self.dir / "crlnumber").write_text("01\n")
        (self.dir / "ca.cnf").write_text(
            _CA_CONFIG.format(
                dir=self.dir,
                days=30,
                ski="hash" if key_identifiers else "none",
                aki="keyid" if key_identifiers else "none",
                eku=eku,
                cdp=f"crlDistributionPoints = URI:{crl_url}" if crl_url else "",
                aia=f"authorityInfoAccess = OCSP;URI:{ocsp_url}" if ocsp_url else "",
            )
        )
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", f"/CN={name}", "-days", "365",
            "-config", "ca.cnf", "-extensions", "ca_ext",
            cwd=self.dir,
        )  # fmt: skip
        self.cert = self.dir / "ca.pem"

    def issue(
        self,
        name: str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        extensions: str = "client_ext",
    ) -> Leaf:
        """`extensions`: client_ext (a client certificate), ocsp_ext (a delegated OCSP
        responder: OCSPSigning EKU)."""
        key, csr, cert = (self.dir / f"{name}{ext}" for ext in (".key", ".csr", ".pem"))
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
            "-config", "ca.cnf",
            cwd=self.dir,
        )  # fmt: skip
        dates: list[str] = []
        if not_before is not None:
            dates += ["-startdate", openssl_time(not_before)]
        if not_after is not None:
            dates += ["-enddate", openssl_time(not_after)]
        openssl(
            "ca", "-batch", "-config", "ca.cnf", "-extensions", extensions, "-notext",
            "-in", str(csr), "-out", str(cert), *dates,
            cwd=self.dir,
        )  # fmt: skip
        return Leaf(cert, key)

    def revoke(self, leaf: Leaf) -> None:
        openssl("ca", "-config", "ca.cnf", "-revoke", str(leaf.cert), cwd=self.dir)

    def gencrl(
        self,
        out: Path,
        *,
        hours: int = 24,
        last_update: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        der: bool = False,
    ) -> Path:
        dates = ["-crlhours", str(hours)]
        if last_update is not None:
            dates += ["-crl_lastupdate", openssl_time(last_update)]
        if next_update is not None:
            dates += ["-crl_nextupdate", openssl_time(next_update)]
        pem = out.with_suffix(".tmp.pem")
        openssl("ca", "-config", "ca.cnf", "-gencrl", "-out", str(pem), *dates, cwd=self.dir)
        if der:
            converted = out.with_suffix(".tmp.der")
            openssl("crl", "-in", str(pem), "-outform", "DER", "-out", str(converted), cwd=self.dir)
            pem = converted
        pem.replace(out)  # atomic, as a Secret update is
        return out


async def curl_status(
    url: str, cacert: str, leaf: Leaf | None, *extra: str, token: str | None = None
) -> tuple[int, str, str]:
    """(curl's exit code, HTTP status or 000, stderr): curl as the peer, as a user would. Run
    without blocking: an in-process proxy shares the test's event loop."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
    args += ["--cacert", cacert, *extra]
    if leaf is not None:
        args += ["--cert", str(leaf.cert), "--key", str(leaf.key)]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    proc = await asyncio.create_subprocess_exec(
        *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()

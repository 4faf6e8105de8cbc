"""The mTLS listener held to nginx's standard (issue 19): Mozilla profiles checked by sslyze,
no resumption around the post-handshake checks, bounded session memory, CA names in the
CertificateRequest, a verify depth, every refused certificate named, and no certificate that
raises. Real `certbound run` processes; sslyze, openssl s_client, curl and Python's ssl as
clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from proxy.tools.pki import Issued, issue, make_ca
from proxy.trust.identity import compute_thumbprint
from tests.support.malformed_certs import duplicated_extension, five_byte_ip_san, write
from tests.support.openssl_ca import Leaf, OpenSSLCA, curl_status
from tests.support.process import ProxyProcess, proxy_process
from tests.support.stack import PKI, Issuer, Upstream, process_config, token_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[1]
# sslyze lives in its own environment (scripts/test.sh): it pins cryptography below the
# version certbound runs on, and the suite must test the TLS stack the image ships.
SSLYZE = ROOT / ".venv-sslyze" / "bin" / "sslyze"


def failures(proc: ProxyProcess) -> dict[str, float]:
    found = re.findall(
        r'^certbound_tls_handshake_failures_total\{reason="(\w+)"\} (\S+)$', proc.metrics(), re.M
    )
    return {reason: float(value) for reason, value in found}


@contextlib.contextmanager
def listener(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path, **tls: Any
) -> Iterator[ProxyProcess]:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["tls"] |= tls
    with proxy_process(tmp_path, config) as running:
        yield running


def files(made: Issued, directory: Path, name: str) -> Leaf:
    cert, key = made.write(directory, name)
    return Leaf(cert, key)


def client_context(pki: PKI, leaf: Leaf, *, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def get(
    port: int, ctx: ssl.SSLContext, token: str, session: ssl.SSLSession | None = None
) -> tuple[str, bool, ssl.SSLSession | None]:
    """(the response's status line, or "" when refused; whether the session was resumed; the
    session to resume next time). Blocking: run it in a thread."""
    request = f"GET /orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        except (ssl.SSLError, OSError):
            return "", False, None
        with tls:
            try:
                tls.sendall(request.encode())
                answer = tls.recv(65536)
            except (ssl.SSLError, OSError):
                answer = b""
            return answer.split(b"\r\n", 1)[0].decode(), tls.session_reused, tls.session


# ---------------------------------------------------------------------------- profiles


def sslyze(proc: ProxyProcess, pki: PKI, profile: str, tmp_path: Path) -> tuple[str, Scan]:
    """sslyze's text (its compliance line) and its JSON report, for one Mozilla profile."""
    cert, key = pki.files("alice")
    out = tmp_path / f"sslyze-{profile}.json"
    done = subprocess.run(
        [
            str(SSLYZE), f"--mozilla_config={profile}", "--cert", cert, "--key", key,
            "--certinfo_ca_file", pki.ca_file, "--json_out", str(out),
            f"localhost:{proc.port}{{127.0.0.1}}",
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    report = json.loads(out.read_text()) if out.exists() else {"server_scan_results": [{}]}
    return done.stdout + done.stderr, Scan(report["server_scan_results"][0].get("scan_result"))


@dataclass
class Scan:
    result: dict[str, Any] | None

    def accepted(self, version: str) -> list[str]:
        assert self.result is not None
        suites = self.result[f"tls_{version}_cipher_suites"]["result"]["accepted_cipher_suites"]
        return sorted(suite["cipher_suite"]["name"] for suite in suites)

    def curves(self) -> list[str]:
        assert self.result is not None
        supported = self.result["elliptic_curves"]["result"]["supported_curves"]
        return sorted(curve["name"] for curve in supported)


TLS13 = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]


async def test_default_profile_is_mozilla_intermediate_by_sslyze(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    with listener(pki, issuer, upstream, tmp_path) as proc:
        text, scan = await asyncio.to_thread(sslyze, proc, pki, "intermediate", tmp_path)
    assert re.search(r"localhost:\d+: OK - Compliant\.", text), text
    # No CBC suites (LUCKY13), and exactly the profile's groups: no P-521, X448 or ffdhe.
    assert scan.accepted("1_2") == [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ]
    assert scan.accepted("1_3") == TLS13
    assert scan.accepted("1_1") == scan.accepted("1_0") == []
    assert scan.curves() == ["X25519", "secp256r1", "secp384r1"]


async def test_modern_profile_is_tls13_only_by_sslyze(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    with listener(pki, issuer, upstream, tmp_path, profile="modern") as proc:
        text, scan = await asyncio.to_thread(sslyze, proc, pki, "modern", tmp_path)
    assert re.search(r"localhost:\d+: OK - Compliant\.", text), text
    assert scan.accepted("1_2") == scan.accepted("1_1") == []
    assert scan.accepted("1_3") == TLS13


# --------------------------------------------------------------------------- resumption


async def test_certificate_expired_since_the_first_connection_is_refused_on_the_next(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    """Without tickets a TLS 1.2 session ID resumes nothing (no server cache); with tickets a
    resumed session (TLS 1.2 and 1.3) meets the validity check after its handshake."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    leaf = files(issue(pki.ca, "expiring", not_after=soon), tmp_path, "expiring")
    token = token_for(issuer, leaf)
    tls12 = client_context(pki, leaf, version=ssl.TLSVersion.TLSv1_2)
    tls13 = client_context(pki, leaf, version=ssl.TLSVersion.TLSv1_3)
    with (
        listener(pki, issuer, upstream, tmp_path) as no_tickets,
        listener(pki, issuer, upstream, tmp_path, session_tickets=1) as tickets,
    ):
        first = {
            "session id": await asyncio.to_thread(get, no_tickets.port, tls12, token),
            "no ticket 1.3": await asyncio.to_thread(get, no_tickets.port, tls13, token),
            "ticket 1.2": await asyncio.to_thread(get, tickets.port, tls12, token),
            "ticket 1.3": await asyncio.to_thread(get, tickets.port, tls13, token),
        }
        for status, _, session in first.values():
            assert status == "HTTP/1.1 200 OK" and session is not None
        seen = len(upstream.seen)
        await asyncio.sleep(max(0.0, (soon - dt.datetime.now(dt.UTC)).total_seconds()) + 1.2)

        # Without tickets, a session ID (TLS 1.2), or the stateful ticket OpenSSL still hands a
        # TLS 1.3 client, is offered and resumes nothing: the full handshake refuses it.
        for name, ctx in (("session id", tls12), ("no ticket 1.3", tls13)):
            status, reused, _ = await asyncio.to_thread(
                get, no_tickets.port, ctx, token, first[name][2]
            )
            assert (status, reused) == ("", False), name
        assert failures(no_tickets)["expired"] == 2
        # A ticket resumes, then the post-handshake check refuses before any request is read.
        for name, port, ctx in (
            ("ticket 1.2", tickets.port, tls12),
            ("ticket 1.3", tickets.port, tls13),
        ):
            status, reused, _ = await asyncio.to_thread(get, port, ctx, token, first[name][2])
            assert (status, reused) == ("", True), name
        assert failures(tickets)["expired"] == 2
        assert "certificate has expired (on a resumed session)" in tickets.output()
    assert len(upstream.seen) == seen  # nothing after the expiry reached the workload


async def test_certificate_revoked_since_the_first_connection_is_refused_on_resumption(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    ca = OpenSSLCA(tmp_path / "ca", "revoking CA")
    leaf = ca.issue("soon revoked")
    crl = ca.gencrl(tmp_path / "ca.crl")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem + ca.cert.read_bytes())
    token = token_for(issuer, leaf)
    tls13 = client_context(pki, leaf, version=ssl.TLSVersion.TLSv1_3)
    tls = {"client_ca_file": str(bundle), "crl_files": [str(crl)], "session_tickets": 1}
    with listener(pki, issuer, upstream, tmp_path, **tls) as proc:
        status, _, session = await asyncio.to_thread(get, proc.port, tls13, token)
        assert status == "HTTP/1.1 200 OK"
        seen = len(upstream.seen)
        ca.revoke(leaf)
        ca.gencrl(crl)
        deadline = time.monotonic() + 15
        while "TLS files reloaded" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            await asyncio.sleep(0.2)
        status, reused, _ = await asyncio.to_thread(get, proc.port, tls13, token, session)
        assert (status, reused) == ("", True)
        assert failures(proc)["revoked"] == 1
    assert len(upstream.seen) == seen


# ------------------------------------------------------------------------ session memory


def rss_kb(proc: ProxyProcess) -> int:
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match
    return int(match.group(1))


def padded_chain(pki: PKI, tmp_path: Path) -> Leaf:
    """alice's certificate followed by 20 unrelated 4 KB certificates (about 90 KB, under
    OpenSSL's 100 KB limit for a Certificate message): a cached session keeps them all."""
    cert, key = pki.files("alice")
    padding = b"".join(padding_certificate(index) for index in range(20))
    padded = tmp_path / "padded.pem"
    padded.write_bytes(Path(cert).read_bytes() + padding)
    return Leaf(padded, Path(key))


def padding_certificate(index: int) -> bytes:
    ca = make_ca(f"padding {index}")
    blob = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.9"), b"p" * 4000)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.cert.not_valid_before_utc)
        .not_valid_after(ca.cert.not_valid_after_utc)
        .add_extension(blob, critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def test_tls12_reconnects_with_a_padded_chain_do_not_grow_memory(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    leaf = padded_chain(pki, tmp_path)
    ctx = client_context(pki, leaf, version=ssl.TLSVersion.TLSv1_2)
    token = issuer.mint(pki.alice)

    def reconnect(port: int, times: int) -> int:
        ok = 0
        for _ in range(times):  # a new session each time, as many clients would make
            ok += get(port, ctx, token)[0] == "HTTP/1.1 200 OK"
        return ok

    with listener(pki, issuer, upstream, tmp_path) as proc:
        assert await asyncio.to_thread(reconnect, proc.port, 30) == 30  # warm
        start = rss_kb(proc)
        assert await asyncio.to_thread(reconnect, proc.port, 300) == 300
        grown = rss_kb(proc) - start
    # With OpenSSL's default server cache each session kept the whole 90 KB chain: 27 MB.
    assert grown < 4 * 1024, f"RSS grew {grown} kB over 300 reconnects"


def exchange_large_bodies(port: int, ctx: ssl.SSLContext, token: str) -> ssl.SSLSocket:
    """One connection: a 512 KiB upload, a 512 KiB download, then left open and idle."""
    tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    body = b"u" * (512 << 10)
    head = f"Host: localhost\r\nAuthorization: Bearer {token}\r\n"
    tls.sendall(f"POST /upload HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode())
    tls.sendall(body)
    read_response(tls)
    tls.sendall(f"GET /big?bytes={512 << 10} HTTP/1.1\r\n{head}\r\n".encode())
    assert len(read_response(tls)) == 512 << 10
    return tls


def read_response(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = re.search(rb"(?i)content-length: (\d+)", head)
    assert length, head
    while len(body) < int(length.group(1)):
        body += tls.recv(1 << 20)
    return body


async def test_idle_connections_keep_no_buffer_of_the_bodies_they_carried(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    """OpenSSL's memory BIOs keep the most they ever held at once: without renewing them, the
    40 idle connections here kept 22.6 MB (1.5-1.8 MB with)."""
    ctx = client_context(pki, Leaf(*map(Path, pki.files("alice"))), version=ssl.TLSVersion.TLSv1_3)
    ctx.check_hostname = False
    token = issuer.mint(pki.alice)

    def hold(port: int, count: int) -> list[ssl.SSLSocket]:
        return [exchange_large_bodies(port, ctx, token) for _ in range(count)]

    with listener(pki, issuer, upstream, tmp_path) as proc:
        for warm in await asyncio.to_thread(hold, proc.port, 4):
            warm.close()
        start = rss_kb(proc)
        held = await asyncio.to_thread(hold, proc.port, 40)
        grown = rss_kb(proc) - start
        for tls in held:
            tls.close()
    assert grown < 8 * 1024, f"RSS grew {grown} kB with 40 idle connections"


# ------------------------------------------------------------ what the listener asks for


def s_client(port: int, pki: PKI, version: str) -> str:
    cert, key = pki.files("alice")
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}",
         "-CAfile", pki.ca_file, "-cert", cert, "-key", key],
        input="", capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    return done.stdout


async def test_certificate_request_names_the_client_cas(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem + pki.other_ca.cert_pem)
    with listener(pki, issuer, upstream, tmp_path, client_ca_file=str(bundle)) as proc:
        for version in ("tls1_2", "tls1_3"):
            out = await asyncio.to_thread(s_client, proc.port, pki, version)
            names = out.split("Acceptable client certificate CA names\n", 1)[1].splitlines()
            assert names[:2] == [
                "O = certbound test, CN = test CA",
                "O = certbound test, CN = other CA",
            ]


def chain(tmp_path: Path, name: str, leaf: Issued, *intermediates: Issued) -> Leaf:
    cert, key = leaf.write(tmp_path, name)
    cert.write_bytes(leaf.cert_pem + b"".join(ca.cert_pem for ca in intermediates))
    return Leaf(cert, key)


async def test_a_chain_deeper_than_verify_depth_is_refused_as_chain_too_long(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    root = make_ca("depth root")
    first = make_ca("intermediate 1", issuer=root)
    second = make_ca("intermediate 2", issuer=first)
    shallow, deep = issue(first, "one below"), issue(second, "two below")
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    accepted = chain(tmp_path, "shallow", shallow, first)
    refused = chain(tmp_path, "deep", deep, second, first)
    tls = {"client_ca_file": str(tmp_path / "root.pem"), "verify_depth": 1}
    with listener(pki, issuer, upstream, tmp_path, **tls) as proc:
        _, status, err = await curl_status(
            proc.url + "/orders", pki.ca_file, accepted, token=issuer.mint(shallow)
        )
        assert status == "200", (err, proc.output())
        _, status, err = await curl_status(
            proc.url + "/orders", pki.ca_file, refused, token=issuer.mint(deep)
        )
        assert status == "000", (err, proc.output())
        assert failures(proc)["chain_too_long"] == 1, proc.output()
        line = next(x for x in proc.output().splitlines() if "reason=chain_too_long" in x)
    assert "(X509_V_ERR 22)" in line and "depth=" in line, line
    assert len(upstream.seen) == 1


# ---------------------------------------------------------------- refusals named, no raise


async def test_unparseable_certificates_are_refused_with_their_reason_and_no_traceback(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    made = {
        "five_byte_ip": five_byte_ip_san(pki.ca),
        "duplicated": duplicated_extension(pki.ca),
    }
    with listener(pki, issuer, upstream, tmp_path) as proc:
        for name, (der, issued) in made.items():
            leaf = write(der, issued, tmp_path, name)
            code, status, _ = await curl_status(
                proc.url + "/orders", pki.ca_file, leaf, token=token_for(issuer, leaf)
            )
            assert code != 0 and status == "000", name
        await asyncio.sleep(0.2)
        counted = failures(proc)
        log = proc.output()
    assert counted["unparseable_certificate"] == 2 and counted["other"] == 0
    assert "Traceback" not in log
    for der, _ in made.values():
        thumbprint = compute_thumbprint(der)
        lines = [x for x in log.splitlines() if thumbprint in x]
        assert len(lines) == 1 and "reason=unparseable_certificate" in lines[0], log
    assert upstream.seen == []


async def test_every_refused_certificate_is_named_even_from_one_address(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    """Two clients behind one SNAT address: each refused certificate gets its own line; the
    same certificate again within the minute is counted, not logged again."""
    strangers = [issue(pki.other_ca, f"stranger {n}") for n in (1, 2)]
    with listener(pki, issuer, upstream, tmp_path) as proc:
        for made in (*strangers, strangers[0]):
            leaf = files(made, tmp_path, made.cert.subject.rfc4514_string()[-10:].replace(" ", "_"))
            _, status, _ = await curl_status(proc.url + "/orders", pki.ca_file, leaf)
            assert status == "000"
        await asyncio.sleep(0.2)
        assert failures(proc)["unknown_ca"] == 3
        lines = [x for x in proc.output().splitlines() if "reason=unknown_ca" in x]
    assert len(lines) == 2, lines
    for made, line in zip(strangers, lines, strict=True):
        cert = made.cert
        assert f"subject='{cert.subject.rfc4514_string()}'" in line
        assert f"issuer='{cert.issuer.rfc4514_string()}'" in line
        assert f"serial={cert.serial_number:x}" in line
        assert f"x5t#S256={compute_thumbprint(made.cert_der)}" in line
        assert f"notAfter={cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" in line
        assert "depth=0" in line and "(X509_V_ERR 20)" in line
        assert "PRIVATE KEY" not in line and "BEGIN CERTIFICATE" not in line

"""Serving-certificate rotation the way Kubernetes does it, on a real `certbound run` process:
the TLS files are symlinks through `..data`, which is swapped atomically to a new directory.
New handshakes must present the new certificate with zero failed requests; a broken new file
must leave the old certificate in service and log an error."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from proxy.tools.pki import Issued, issue
from tests.support.process import proxy_process
from tests.support.rawhttp import raw_exchange
from tests.support.stack import PKI, Issuer, Upstream, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def k8s_secret_dir(root: Path, cert: Issued, ca_pem: bytes, version: str) -> None:
    """root/..<version>/{tls.crt,tls.key,ca.crt}; root/..data -> ..<version> (atomically);
    root/tls.crt -> ..data/tls.crt etc. (created once)."""
    target = root / f"..{version}"
    target.mkdir()
    (target / "tls.crt").write_bytes(cert.cert_pem)
    (target / "tls.key").write_bytes(cert.key_pem)
    (target / "ca.crt").write_bytes(ca_pem)
    tmp = root / "..data_tmp"
    os.symlink(target.name, tmp)
    os.replace(tmp, root / "..data")  # rename(2) over the old link: atomic
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (root / name).is_symlink():
            os.symlink(f"..data/{name}", root / name)


def broken_secret_dir(root: Path, version: str) -> None:
    target = root / f"..{version}"
    target.mkdir()
    (target / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    (target / "tls.key").write_text("garbage")
    (target / "ca.crt").write_bytes((root / "ca.crt").read_bytes())
    tmp = root / "..data_tmp"
    os.symlink(target.name, tmp)
    os.replace(tmp, root / "..data")


@dataclass
class Seen:
    results: list[tuple[float, bool, int, bytes | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def peers_since(self, since: float, sni: bool) -> list[bytes | None]:
        return [der for t, s, _, der in self.results if t >= since and s is sni]


async def client_loop(port: int, pki: PKI, token: str, seen: Seen, stop: asyncio.Event) -> None:
    """New connection (new handshake) per request, alternating SNI and no SNI."""
    with_sni = ssl.create_default_context(cafile=pki.ca_file)
    with_sni.load_cert_chain(*pki.files("alice"))
    no_sni = ssl.create_default_context(cafile=pki.ca_file)
    no_sni.check_hostname = False  # an IP target sends no SNI; the chain is still verified
    no_sni.load_cert_chain(*pki.files("alice"))
    request = (
        b"GET /rotate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    sni = True
    while not stop.is_set():
        try:
            resp = await raw_exchange(
                port, with_sni if sni else no_sni, request,
                host="localhost" if sni else "127.0.0.1", timeout=3,
            )  # fmt: skip
            seen.results.append((time.monotonic(), sni, resp.status, resp.peer_der))
            if resp.status != 200:
                seen.errors.append(f"status {resp.status}")
        except (OSError, TimeoutError) as exc:
            seen.errors.append(f"{type(exc).__name__}: {exc}")
        sni = not sni
        await asyncio.sleep(0.02)


def serving_not_after(metrics_text: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("certbound_certificate_not_after_timestamp_seconds{")
        and 'role="serving"' in line
    ]


async def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


async def test_k8s_style_symlink_swap_rotates_the_serving_cert_without_failed_requests(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    now = dt.datetime.now(dt.UTC)
    old = issue(pki.ca, "localhost", server=True, client=False, dns_names=("localhost",),
                ip_addresses=("127.0.0.1",), not_after=now + dt.timedelta(days=30))  # fmt: skip
    new = issue(pki.ca, "localhost", server=True, client=False, dns_names=("localhost",),
                ip_addresses=("127.0.0.1",), not_after=now + dt.timedelta(days=90))  # fmt: skip
    assert old.key_pem != new.key_pem
    k8s_secret_dir(secret, old, pki.ca.cert_pem, "2026_a")

    config = process_config(pki, issuer, upstream, tmp_path)
    config["tls"] = {
        "cert_file": str(secret / "tls.crt"),
        "key_file": str(secret / "tls.key"),
        "client_ca_file": str(secret / "ca.crt"),
    }
    token = issuer.mint(pki.alice)
    seen, stop = Seen(), asyncio.Event()
    with proxy_process(tmp_path, config) as proc:
        loop = asyncio.create_task(client_loop(proc.port, pki, token, seen, stop))
        try:
            await asyncio.sleep(0.5)
            assert {der for _, _, _, der in seen.results} == {old.cert_der}

            swapped = time.monotonic()
            k8s_secret_dir(secret, new, pki.ca.cert_pem, "2026_b")
            rotated = await wait_for(
                lambda: (
                    new.cert_der in seen.peers_since(swapped, True)
                    and new.cert_der in seen.peers_since(swapped, False)
                ),
                8,
            )
            assert rotated, "new handshakes never presented the new certificate"
            await asyncio.sleep(0.5)
            settled = time.monotonic()
            await asyncio.sleep(0.5)
            assert set(seen.peers_since(settled, True) + seen.peers_since(settled, False)) == {
                new.cert_der
            }
            expiry = x509.load_der_x509_certificate(new.cert_der).not_valid_after_utc.timestamp()
            assert serving_not_after(proc.metrics()) == [expiry]

            broken_secret_dir(secret, "2026_c")
            broke = time.monotonic()
            logged = await wait_for(lambda: "keeping the old ones" in proc.output(), 6)
            assert logged, proc.output()[-2000:]
            await asyncio.sleep(0.3)
            after = seen.peers_since(broke, True) + seen.peers_since(broke, False)
            assert after and set(after) == {new.cert_der}
        finally:
            stop.set()
            await loop
    assert seen.errors == [], seen.errors[:5]
    assert len(seen.results) > 20
    assert {s for _, _, s, _ in seen.results} == {200}

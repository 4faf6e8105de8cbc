"""The injector's serving certificate rotated as cert-manager and kubelet do it (a new key
signed by the same CA, the Secret volume's `..data` symlink swapped): a client that trusts the
CA only, as the API server does with the chart's caBundle, completes every handshake before,
during and after the swap, and gets the new certificate within seconds."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from proxy.tools.pki import Issued, issue, make_ca
from tests.support.process import free_port

from .conftest import REPO, VALUES

pytestmark = pytest.mark.slow


def _secret_volume(directory: Path, version: str, leaf: Issued) -> None:
    """Write the files as kubelet does: a timestamped directory, then `..data` swapped to it."""
    target = directory / f"..{version}"
    target.mkdir()
    (target / "tls.crt").write_bytes(leaf.cert_pem)
    (target / "tls.key").write_bytes(leaf.key_pem)
    link = directory / "..data_tmp"
    link.symlink_to(target.name)
    link.replace(directory / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def _served_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_renewed_serving_key_is_picked_up_without_a_failed_handshake(tmp_path: Path) -> None:
    ca = make_ca("certbound injector webhook CA")
    first, second = (
        issue(ca, "injector", server=True, client=False, dns_names=("localhost",)) for _ in range(2)
    )
    assert first.key_pem != second.key_pem
    volume = tmp_path / "tls"
    volume.mkdir()
    _secret_volume(volume, "2026_12_06_01", first)
    port = free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "tls": {"cert_file": str(volume / "tls.crt"), "key_file": str(volume / "tls.key")},
        "values": yaml.safe_load(VALUES.read_text()),
    }
    (tmp_path / "injector.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    log = (tmp_path / "injector.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "injector", "--config", str(tmp_path / "injector.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                served = _served_certificate(port, context)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "injector.log").read_text()
                assert time.monotonic() < deadline, "the injector did not start"
                time.sleep(0.2)
        assert served == first.cert
        _secret_volume(volume, "2026_12_06_02", second)
        deadline = time.monotonic() + 15
        handshakes = 0
        while served != second.cert:
            assert time.monotonic() < deadline, "the renewed certificate was not loaded"
            served = _served_certificate(port, context)  # raises on a failed handshake
            assert served in (first.cert, second.cert)
            handshakes += 1
            time.sleep(0.1)
        assert handshakes >= 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        log.close()
    lines = (tmp_path / "injector.log").read_text().splitlines()
    assert any("serving certificate reloaded from" in line for line in lines), lines

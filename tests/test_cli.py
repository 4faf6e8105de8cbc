"""The command line as a user runs it: thumbprint against openssl, and the demo's curl lines."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import PKI, thumbprint


def test_thumbprint_matches_openssl(pki: PKI) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is required (scripts/test.sh installs it)"
    cert = pki.dir / "alice.pem"
    der = subprocess.run(
        [openssl, "x509", "-in", str(cert), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    digest = subprocess.run(
        [openssl, "dgst", "-sha256", "-binary"], input=der, capture_output=True, check=True
    ).stdout
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "thumbprint", str(cert)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected == thumbprint(pki.alice)


def test_thumbprint_of_missing_or_non_pem_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_text("hello")
    for path in (tmp_path / "missing.pem", tmp_path / "x.pem"):
        out = subprocess.run(
            [sys.executable, "-m", "proxy", "thumbprint", str(path)], capture_output=True, text=True
        )
        assert out.returncode == 2 and "certbound:" in out.stderr and "Traceback" not in out.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_demo_prints_curl_lines_that_work_when_pasted(tmp_path: Path) -> None:
    assert shutil.which("curl"), "curl is required (scripts/test.sh installs it)"
    port, admin = _free_port(), _free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--port",
            str(port),
            "--admin-port",
            str(admin),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                break
        curls = [ln for ln in lines if ln.startswith("curl ")]
        assert len(curls) == 5, lines

        def paste(line: str) -> str:
            return subprocess.run(
                ["bash", "-c", line], capture_output=True, text=True, timeout=30, env=os.environ
            ).stdout

        ok = paste(curls[0])
        assert '"X-Certbound-Subject": "alice"' in ok
        replay = paste(curls[1])
        assert replay.startswith("HTTP/1.1 401") and 'error="invalid_token"' in replay
        bare = paste(curls[2])
        assert bare.startswith("HTTP/1.1 401") and re.search(
            r'^WWW-Authenticate: Bearer, DPoP algs="[A-Za-z0-9 ]+"\r?$', bare, re.M
        )
        unbound = paste(curls[3])
        assert unbound.startswith("HTTP/1.1 401") and "missing_cnf" in unbound
        metrics = paste(curls[4])
        assert 'certbound_requests_total{issuer="0",outcome="forwarded",reason="ok"} 1.0' in metrics
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            demo.kill()
            pytest.fail("demo did not stop on SIGINT")

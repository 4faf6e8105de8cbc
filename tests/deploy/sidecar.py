"""A pod on loopback for the chart's and the injector's sidecar: an echo workload and a JWKS
endpoint served from threads, certbound's readiness awaited, curl as the client."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from .pki import ThrowawayPKI


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def jwks_handler(jwks: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    body = json.dumps(jwks).encode()

    class _JWKS(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return _JWKS


def wait_ready(admin: int, proc: subprocess.Popen[str], deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"certbound exited with {proc.returncode}:\n{out}\n{err}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail("certbound did not become ready (/readyz) in time")


def fetch(curl: str, pki: ThrowawayPKI, url: str, *headers: str) -> tuple[int, str, str]:
    args = [
        curl,
        "-sS",
        "--max-time",
        "10",
        "--cert",
        str(pki.client_cert),
        "--key",
        str(pki.client_key),
        "--cacert",
        str(pki.ca_cert),
        "-D",
        "-",
        "-w",
        "\n%{http_code}",
    ]
    for h in headers:
        args += ["-H", h]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    head_and_body, _, code = result.stdout.rpartition("\n")
    # text=True turns the CRLFs of the header block into plain newlines.
    head, _, body = head_and_body.partition("\n\n")
    return int(code), head, body

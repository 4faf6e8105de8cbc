"""A pod simulated on loopback: the chart's rendered ConfigMap runs the real
certbound in front of a real HTTP workload, with a real JWKS endpoint, and
curl drives a request through with a client certificate and a bound token."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import RenderFn, find
from .pki import ThrowawayPKI, write_pki

ISSUER = "https://issuer.certbound.test"
AUDIENCE = "payments-api"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _Workload(BaseHTTPRequestHandler):
    """Echoes the request path and headers as JSON, like a workload would see them."""

    def do_GET(self) -> None:
        body = json.dumps(
            {"workload": "hello", "path": self.path, "headers": dict(self.headers.items())}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _jwks_handler(jwks: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
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


def _rendered_config(
    render: RenderFn, *, workload: int, mtls: int, admin: int, jwks_port: int
) -> dict[str, Any]:
    docs = render(
        sets=[
            f"workload.port={workload}",
            f"proxy.ports.mtls={mtls}",
            f"proxy.ports.admin={admin}",
            f"proxy.config.tokens.issuer={ISSUER}",
            f"proxy.config.tokens.audience={AUDIENCE}",
            f"proxy.config.tokens.jwks_uri=http://127.0.0.1:{jwks_port}/jwks",
            "proxy.config.tokens.algorithms={ES256}",
        ]
    )
    config: dict[str, Any] = yaml.safe_load(find(docs, "ConfigMap")["data"]["config.yaml"])
    return config


def _as_test_pod(config: dict[str, Any], pki: ThrowawayPKI) -> dict[str, Any]:
    """Rewrite the in-pod paths to the test PKI; keep everything else as rendered."""
    paths = {
        "/etc/certbound/tls/tls.crt": pki.server_cert,
        "/etc/certbound/tls/tls.key": pki.server_key,
        "/etc/certbound/tls/ca.crt": pki.ca_cert,
    }
    for key in ("cert_file", "key_file", "client_ca_file"):
        config["tls"][key] = str(paths[config["tls"][key]])
    config["listen"]["host"] = "127.0.0.1"  # in a pod 0.0.0.0; here loopback only
    config["admin"]["host"] = "127.0.0.1"
    return config


def _wait_ready(admin: int, proc: subprocess.Popen[str], deadline_s: float = 30) -> None:
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


def _curl(curl: str, pki: ThrowawayPKI, url: str, *headers: str) -> tuple[int, str, str]:
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


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_request_with_bound_token_flows_through_the_chart_rendered_sidecar(
    render: RenderFn, curl: str, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path / "tls")
    signing_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="test-key", alg="ES256", use="sig")
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "shop-frontend",
            "scope": "payments:read",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "t-1",
            "cnf": {"x5t#S256": pki.client_thumbprint},
        },
        signing_key,
        algorithm="ES256",
        headers={"kid": "test-key"},
    )
    mtls, admin = _free_port(), _free_port()

    with _serve(_Workload) as workload_port, _serve(_jwks_handler({"keys": [jwk]})) as jwks_port:
        config = _rendered_config(
            render, workload=workload_port, mtls=mtls, admin=admin, jwks_port=jwks_port
        )
        # The chart, not this test, points the proxy at the workload on loopback.
        assert config["upstream"]["url"] == f"http://127.0.0.1:{workload_port}"
        config_file = tmp_path / "config.yaml"
        config_file.write_text(yaml.safe_dump(_as_test_pod(config, pki)))

        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_ready(admin, proc)
            url = f"https://localhost:{mtls}/orders?id=7"

            code, _, body = _curl(curl, pki, url, f"Authorization: Bearer {token}")
            assert code == 200, body
            seen = json.loads(body)
            assert seen["workload"] == "hello"
            assert seen["path"] == "/orders?id=7"
            headers = {k.lower(): v for k, v in seen["headers"].items()}
            assert headers["x-certbound-thumbprint"] == pki.client_thumbprint
            assert headers["x-certbound-subject"] == "alice"
            assert "authorization" not in headers or headers["authorization"].startswith("Bearer")

            code, head, _ = _curl(curl, pki, url)
            assert code == 401
            assert "www-authenticate: bearer" in head.lower()

            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            assert (
                'certbound_requests_total{issuer="0",outcome="forwarded",reason="ok"} 1.0'
                in metrics
            )
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            # Shown by pytest only when the test fails.
            print("certbound stderr:\n" + err)

"""A pod simulated on loopback: the chart's rendered ConfigMap runs the real
certbound in front of a real HTTP workload, with a real JWKS endpoint, and
curl drives a request through with a client certificate and a bound token."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import RenderFn, find
from .echo_workload import Echo
from .pki import ThrowawayPKI, write_pki
from .sidecar import fetch, jwks_handler, serve, wait_ready

ISSUER = "https://issuer.certbound.test"
AUDIENCE = "payments-api"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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

    with serve(Echo) as workload_port, serve(jwks_handler({"keys": [jwk]})) as jwks_port:
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
            wait_ready(admin, proc)
            url = f"https://localhost:{mtls}/orders?id=7"

            code, _, body = fetch(curl, pki, url, f"Authorization: Bearer {token}")
            assert code == 200, body
            seen = json.loads(body)
            assert seen["workload"] == "echo"
            assert seen["path"] == "/orders?id=7"
            headers = {k.lower(): v for k, v in seen["headers"].items()}
            assert headers["x-certbound-thumbprint"] == pki.client_thumbprint
            assert headers["x-certbound-subject"] == "alice"
            assert "authorization" not in headers or headers["authorization"].startswith("Bearer")

            code, head, _ = fetch(curl, pki, url)
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

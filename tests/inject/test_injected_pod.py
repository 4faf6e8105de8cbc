"""An injected pod simulated on loopback: kube-inject's output, read back, starts the real
certbound exactly as kubelet would (the sidecar's args and env, the config from the pod's
annotation as the downward API projects it) in front of a real workload, and curl goes
through with a client certificate and a bound token."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from tests.deploy.echo_workload import Echo
from tests.deploy.pki import write_pki
from tests.deploy.sidecar import fetch, jwks_handler, serve, wait_ready
from tests.support.process import free_port

from .conftest import kube_inject, sidecar

ISSUER = "https://issuer.certbound.test"
AUDIENCE = "payments-api"


def _manifest(workload_port: int, admin_port: int) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: payments, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: payments}}}}
  template:
    metadata:
      labels: {{app: payments}}
      annotations:
        certbound.io/inject: "true"
        certbound.io/tls-secret: payments-mtls
        certbound.io/audience: {AUDIENCE}
        certbound.io/admin-port: "{admin_port}"
    spec:
      containers:
        - name: payments
          image: registry.example.com/payments:7
          ports: [{{name: http, containerPort: {workload_port}}}]
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_request_with_bound_token_flows_through_the_injected_sidecar(
    curl: str, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path / "tls")
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k", alg="ES256", use="sig")
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    token = jwt.encode(
        {**claims, "cnf": {"x5t#S256": pki.client_thumbprint}},
        key,
        algorithm="ES256",
        headers={"kid": "k"},
    )
    mtls, admin = free_port(), free_port()
    with serve(Echo) as workload_port, serve(jwks_handler({"keys": [jwk]})) as jwks:
        # The audience and the admin port come from the pod's annotations, the rest from the
        # values one injector serves the whole cluster with.
        values = {
            "inject": {"ports": {"mtls": mtls}},
            "proxy": {
                "config": {
                    "tokens": {
                        "issuer": ISSUER,
                        "audience": "another-api",
                        "jwks_uri": f"http://127.0.0.1:{jwks}/jwks",
                        "algorithms": ["ES256"],
                    }
                },
            },
        }
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        result = kube_inject(
            "-f",
            "-",
            "--values",
            str(tmp_path / "values.yaml"),
            stdin=_manifest(workload_port, admin),
        )
        assert result.returncode == 0, result.stderr
        (deployment,) = list(yaml.safe_load_all(result.stdout))
        template = deployment["spec"]["template"]
        container = sidecar(template)
        assert container is not None
        config_file, env = _as_kubelet_would(template, container, tmp_path, pki)
        args = container["args"]
        assert args == ["run", "--config", "/etc/certbound/config.yaml"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args[:-1], str(config_file)],
            env=env,
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
            assert seen["path"] == "/orders?id=7"
            headers = {k.lower(): v for k, v in seen["headers"].items()}
            assert headers["x-certbound-thumbprint"] == pki.client_thumbprint
            code, head, _ = fetch(curl, pki, url)
            assert code == 401 and "www-authenticate: bearer" in head.lower()
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            print("certbound stderr:\n" + err)


def _as_kubelet_would(
    template: dict[str, Any], container: dict[str, Any], tmp_path: Path, pki: Any
) -> tuple[Path, dict[str, str]]:
    """The config file the downward API projects, and the container's environment with the
    in-pod TLS paths pointing at the test PKI; loopback instead of 0.0.0.0."""
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    (source,) = volumes["certbound-config"]["projected"]["sources"]
    (item,) = source["downwardAPI"]["items"]
    field = item["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['certbound.io/config']"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(template["metadata"]["annotations"]["certbound.io/config"])
    assert volumes["certbound-tls"]["secret"]["secretName"] == "payments-mtls"
    paths = {
        "/etc/certbound/tls/tls.crt": str(pki.server_cert),
        "/etc/certbound/tls/tls.key": str(pki.server_key),
        "/etc/certbound/tls/ca.crt": str(pki.ca_cert),
    }
    env = {"PATH": "/usr/bin:/bin", "CERTBOUND_LISTEN__HOST": "127.0.0.1"}
    env["CERTBOUND_ADMIN__HOST"] = "127.0.0.1"
    for entry in container["env"]:
        env[entry["name"]] = paths.get(entry["value"], entry["value"])
    return config_file, env

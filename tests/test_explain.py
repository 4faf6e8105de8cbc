"""`certbound explain`: each step printed, the outcome and exit code right, no network but keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import AUDIENCE, PKI, Issuer, thumbprint


def explain(
    tmp_path: Path,
    pki: PKI,
    issuer: Issuer,
    who: str,
    token: str,
    *extra: str,
    policy: dict[str, object] | None = None,
) -> subprocess.CompletedProcess[str]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    cert, key = pki.files("server")
    config = {
        "tls": {"cert_file": cert, "key_file": key, "client_ca_file": pki.ca_file},
        # The issuer URL points nowhere reachable by design: explain must not need it.
        "tokens": {"issuer": issuer.url, "audience": AUDIENCE, "jwks_file": str(jwks)},
    }
    if policy:
        config["policy"] = policy
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "explain",
            "--config",
            str(path),
            "--cert",
            pki.files(who)[0],
            "--token",
            "-",
            *extra,
        ],
        input=token,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bound_token_explains_to_forward(tmp_path: Path, pki: PKI) -> None:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    result = explain(tmp_path, pki, issuer, "alice", issuer.mint(pki.alice, sub="alice"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert thumbprint(pki.alice) in result.stdout
    assert '"sub": "alice"' in result.stdout
    assert result.stdout.rstrip().endswith("outcome: FORWARD")


def test_replayed_token_explains_the_mismatch(tmp_path: Path, pki: PKI) -> None:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    token = issuer.mint(pki.alice)
    result = explain(tmp_path, pki, issuer, "bob", "Bearer " + token)
    assert result.returncode == 1
    out = result.stdout
    assert f"token cnf.x5t#S256    {thumbprint(pki.alice)}" in out
    assert f"presented x5t#S256    {thumbprint(pki.bob)}" in out
    assert 'outcome: REFUSE 401 error="invalid_token" (reason thumbprint_mismatch)' in out
    assert token.rsplit(".", 1)[1] not in out  # the signature is never printed


def test_policy_step_names_the_rule_and_missing_scope(tmp_path: Path, pki: PKI) -> None:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    policy = {"routes": [{"path": "/admin/**", "scopes": ["admin"]}]}
    result = explain(
        tmp_path,
        pki,
        issuer,
        "alice",
        issuer.mint(pki.alice, scope="read"),
        "--method",
        "DELETE",
        "--path",
        "/admin/users/1",
        policy=policy,
    )
    assert result.returncode == 1
    assert "matches rule path=/admin/**" in result.stdout
    assert "(reason insufficient_scope)" in result.stdout


def test_expired_token_and_garbage(tmp_path: Path, pki: PKI) -> None:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    expired = explain(tmp_path, pki, issuer, "alice", issuer.mint(pki.alice, exp=1000))
    assert expired.returncode == 1 and "(reason expired)" in expired.stdout
    garbage = explain(tmp_path, pki, issuer, "alice", "opaque-token-value")
    assert garbage.returncode == 1 and "not a JWT" in garbage.stdout
    assert "Traceback" not in garbage.stderr + expired.stderr


def test_a_file_that_is_not_a_certificate_is_a_clear_error(tmp_path: Path, pki: PKI) -> None:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    explain(tmp_path, pki, issuer, "alice", "x")  # writes config.yaml
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "explain", "--config", str(tmp_path / "config.yaml"),
         "--cert", str(not_pem), "--token", "x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "holds no PEM certificate" in result.stderr and "Traceback" not in result.stderr

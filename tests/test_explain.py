"""`certbound explain`: each step printed, the outcome and exit code right, no network but keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.openssl_ca import OpenSSLCA
from tests.support.stack import AUDIENCE, PKI, Issuer, Legacy, thumbprint


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


@pytest.mark.slow
def test_expired_token_and_garbage(tmp_path: Path, pki: PKI) -> None:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    expired = explain(tmp_path, pki, issuer, "alice", issuer.mint(pki.alice, exp=1000))
    assert expired.returncode == 1 and "(reason expired)" in expired.stdout
    garbage = explain(tmp_path, pki, issuer, "alice", "opaque-token-value")
    assert garbage.returncode == 1 and "not a JWT" in garbage.stdout
    assert "Traceback" not in garbage.stderr + expired.stderr


@pytest.mark.slow
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


# --- the certificate alone, checked as the listener would -------------------------------------


def explain_cert(
    tmp_path: Path, pki: PKI, cert: str, **tls: object
) -> subprocess.CompletedProcess[str]:
    server_cert, key = pki.files("server")
    config = {
        "tls": {"cert_file": server_cert, "key_file": key, "client_ca_file": pki.ca_file, **tls},
        "tokens": {"issuer": "https://issuer.invalid", "audience": AUDIENCE},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "proxy", "explain", "--config", str(path), "--cert", cert],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_certificate_alone_is_accepted_without_a_token(tmp_path: Path, pki: PKI) -> None:
    result = explain_cert(tmp_path, pki, pki.files("alice")[0])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chain       ok" in result.stdout and "purpose     ok" in result.stdout
    assert "revocation  not checked: no tls.crl_files configured" in result.stdout
    assert "outcome: certificate accepted; no token given" in result.stdout


@pytest.mark.parametrize(
    ("who", "reason", "fix"),
    [
        ("expired", "expired", "renew it"),
        ("stranger", "unknown_ca", "add its issuing CA"),
        ("server_only", "bad_purpose", "extendedKeyUsage clientAuth"),
    ],
)
def test_certificate_the_listener_refuses_is_explained_with_the_fix(
    tmp_path: Path, pki: PKI, who: str, reason: str, fix: str
) -> None:
    result = explain_cert(tmp_path, pki, pki.files(who)[0])
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the listener refuses it: {reason}" in result.stdout
    assert fix in result.stdout
    assert f"outcome: REFUSE: the TLS handshake fails (reason {reason})" in result.stdout


@pytest.mark.slow
def test_legacy_certificate_is_accepted_and_strictness_named(
    tmp_path: Path, pki: PKI, legacy: Legacy
) -> None:
    lenient = explain_cert(tmp_path, pki, str(legacy.leaf.cert), client_ca_file=str(legacy.bundle))
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "accepted (refused only with tls.x509_strict)" in lenient.stdout
    strict = explain_cert(
        tmp_path, pki, str(legacy.leaf.cert), client_ca_file=str(legacy.bundle), x509_strict=True
    )
    assert strict.returncode == 1
    assert "the listener refuses it: strict_violation" in strict.stdout
    assert "leave tls.x509_strict off" in strict.stdout


@pytest.mark.slow
def test_revoked_certificate_is_explained_from_the_crl_files(tmp_path: Path, pki: PKI) -> None:
    ca = OpenSSLCA(tmp_path / "ca", "revoking CA")
    good, revoked = ca.issue("good client"), ca.issue("revoked client")
    ca.revoke(revoked)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem + ca.cert.read_bytes())
    crl = ca.gencrl(tmp_path / "ca.crl")
    tls = {"client_ca_file": str(bundle), "crl_files": [str(crl)]}
    ok = explain_cert(tmp_path, pki, str(good.cert), **tls)
    assert ok.returncode == 0 and "revocation  ok: not on its CA's CRL" in ok.stdout
    refused = explain_cert(tmp_path, pki, str(revoked.cert), **tls)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the listener refuses it: revoked" in refused.stdout
    assert "issue the client a new certificate" in refused.stdout


def test_dpop_bound_token_is_named_and_not_explained_as_unbound(tmp_path: Path, pki: PKI) -> None:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    result = explain(tmp_path, pki, issuer, "alice", issuer.mint(cnf={"jkt": "A" * 43}))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DPoP-bound, RFC 9449" in result.stdout
    assert "reason dpop_token_as_bearer" in result.stdout

"""config: YAML + environment, every problem reported with its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config import ConfigError, load_settings
from tests.support.stack import PKI


def write_config(tmp_path: Path, pki: PKI, **sections: dict[str, object]) -> Path:
    cert, key = pki.files("server")
    config: dict[str, dict[str, object]] = {
        "tls": {"cert_file": cert, "key_file": key, "client_ca_file": pki.ca_file},
        "tokens": {"issuer": "https://issuer.example", "audience": "api"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = tmp_path / "certbound.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {})
    return info.value.problems


def test_minimal_config_loads_with_defaults(tmp_path: Path, pki: PKI) -> None:
    s = load_settings(write_config(tmp_path, pki), {})
    assert (s.listen.port, s.admin.port) == (8443, 9090)
    assert (s.tls.profile, s.tls.min_version, s.tls.verify_depth) == ("intermediate", "", 3)
    assert s.tokens.algorithms == ("RS256", "PS256", "ES256", "EdDSA")


def test_environment_overrides_every_level(tmp_path: Path, pki: PKI) -> None:
    env = {
        "CERTBOUND_UPSTREAM__URL": "http://127.0.0.1:9000",
        "CERTBOUND_LISTEN__PORT": "9443",
        "CERTBOUND_TOKENS__ALGORITHMS": "ES256,RS256",
        "CERTBOUND_TOKENS__REQUIRE_TYP_AT_JWT": "true",
        "OTHER_VARIABLE": "ignored",
    }
    s = load_settings(write_config(tmp_path, pki), env)
    assert s.upstream.url == "http://127.0.0.1:9000"
    assert s.listen.port == 9443
    assert s.tokens.algorithms == ("ES256", "RS256")
    assert s.tokens.require_typ_at_jwt is True


def test_unknown_keys_in_file_and_environment_are_errors(tmp_path: Path, pki: PKI) -> None:
    path = write_config(tmp_path, pki, upstream={"urll": "x"}, bogus={"a": 1})
    found = problems(path, {"CERTBOUND_TOKENS__AUDIENCES": "x"})
    assert "upstream.urll: unknown key" in found
    assert "bogus: unknown key" in found
    assert "tokens.audiences: unknown key" in found


def test_all_bad_values_are_reported_together(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path,
        pki,
        listen={"port": 70000},
        tls={"min_version": "1.0", "client_ca_file": "/nonexistent/ca.pem"},
        upstream={"url": "ftp://x", "timeout_seconds": 0},
        tokens={"algorithms": ["none", "RS256"], "issuer": "", "leeway_seconds": -1},
    )
    found = "\n".join(problems(path))
    for key in (
        "listen.port",
        "tls.min_version",
        "tls.client_ca_file",
        "upstream.url",
        "upstream.timeout_seconds",
        'tokens.algorithms: "none"',
        "tokens.issuer: required",
        "tokens.leeway_seconds",
    ):
        assert key in found, key


def test_tls_profile_and_min_version_conflict_is_explained(tmp_path: Path, pki: PKI) -> None:
    path = write_config(tmp_path, pki, tls={"profile": "modern", "min_version": "1.2"})
    assert problems(path) == [
        'tls.min_version: "1.2" conflicts with tls.profile: modern (TLS 1.3 and later only); '
        "leave tls.min_version unset, or use tls.profile: intermediate to accept TLS 1.2"
    ]
    # Raising intermediate's floor is no conflict.
    load_settings(write_config(tmp_path, pki, tls={"min_version": "1.3"}), {})
    found = problems(write_config(tmp_path, pki, tls={"profile": "old", "verify_depth": 11}))
    assert found == [
        "tls.profile: intermediate or modern, got 'old'",
        "tls.verify_depth: must be 0 to 10, got 11",
    ]


def test_wrong_types_name_the_key(tmp_path: Path, pki: PKI) -> None:
    path = write_config(tmp_path, pki, listen={"port": "high"}, log={"audit_accepted": "yes"})
    found = problems(path)
    assert any(p.startswith("listen.port: expected an integer") for p in found)
    assert any(p.startswith("log.audit_accepted: expected true or false") for p in found)


def test_hmac_algorithms_only_when_listed(tmp_path: Path, pki: PKI) -> None:
    s = load_settings(write_config(tmp_path, pki), {})
    assert not any(a.startswith("HS") for a in s.tokens.algorithms)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_check_config_cli_ok_and_failure(tmp_path: Path, pki: PKI) -> None:
    good = run_cli("check-config", str(write_config(tmp_path, pki)))
    assert good.returncode == 0 and "config OK" in good.stdout
    bad_path = write_config(tmp_path, pki, upstream={"url": "nope"}, tokens={"audience": ""})
    bad = run_cli("check-config", str(bad_path))
    assert bad.returncode == 2
    assert "upstream.url" in bad.stderr and "tokens.audience: required" in bad.stderr


@pytest.mark.slow
def test_check_config_loads_tls_files(tmp_path: Path, pki: PKI) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    result = run_cli(
        "check-config", str(write_config(tmp_path, pki, tls={"cert_file": str(garbage)}))
    )
    assert result.returncode == 2 and "tls.cert_file" in result.stderr


def test_run_refuses_bad_config_before_binding(tmp_path: Path, pki: PKI) -> None:
    result = run_cli("run", "--config", str(write_config(tmp_path, pki, bogus={"x": 1})))
    assert result.returncode == 2 and "bogus: unknown key" in result.stderr


def test_route_list_errors_name_the_route_index(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path,
        pki,
        policy={
            "unmatched": "maybe",
            "routes": [
                {"path": "/ok/**", "scopes": ["a"]},
                {"path": "/a/../b"},
                {"path": "/x", "public": True, "scopes": ["s"]},
                {"path": "/y", "binding_mode": "lax", "colour": "red"},
            ],
        },
    )
    found = "\n".join(problems(path))
    assert "policy.unmatched" in found
    assert "policy.routes[1].path: '/a/../b': dot segment" in found
    assert "policy.routes[2]: a public route takes no token" in found
    assert "policy.routes[3].colour: unknown key" in found


def test_nested_environment_overrides(tmp_path: Path, pki: PKI) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    env = {
        "CERTBOUND_TOKENS__INTROSPECTION__ENABLED": "true",
        "CERTBOUND_TOKENS__INTROSPECTION__CLIENT_ID": "rs",
        "CERTBOUND_TOKENS__INTROSPECTION__CLIENT_SECRET_FILE": str(secret),
        "CERTBOUND_POLICY__ROUTES": "[{path: /a/**, scopes: [x]}]",
        "CERTBOUND_BINDING__MODE": "report_only",
    }
    s = load_settings(write_config(tmp_path, pki), env)
    assert s.tokens.introspection.enabled and s.tokens.introspection.client_id == "rs"
    assert s.policy.routes[0].path == "/a/**" and s.policy.routes[0].scopes == ("x",)
    assert s.binding.mode == "report_only"


def test_header_source_without_trusted_proxies_is_refused(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path, pki, client_cert={"source": "header", "trusted_proxies": ["nope"]}
    )
    found = "\n".join(problems(path))
    assert "client_cert.trusted_proxies: 'nope' is not a CIDR" in found
    path = write_config(tmp_path, pki, client_cert={"source": "header"})
    assert any("trusted_proxies: required" in p for p in problems(path))


def test_introspection_needs_exactly_one_client_authentication(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path, pki, tokens={"introspection": {"enabled": True, "client_id": "rs"}}
    )
    assert any("exactly one" in p for p in problems(path))


def test_data_plane_keys_are_checked_with_their_names(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path,
        pki,
        listen={"max_header_bytes": 100, "event_loop": "trio"},
        upstream={"upgrade_idle_timeout_seconds": 0},
        forwarding={"upgrade_protocols": ["websocket", "h2c\r\nX: 1"]},
    )
    found = "\n".join(problems(path))
    for key in (
        "listen.max_header_bytes: must be 1024 to 1048576, got 100",
        "listen.event_loop: one of auto, uvloop, asyncio, got 'trio'",
        "upstream.upgrade_idle_timeout_seconds: must be greater than 0",
        "forwarding.upgrade_protocols: 'h2c\\r\\nX: 1' is not a protocol name",
    ):
        assert key in found, key


def test_data_plane_defaults(tmp_path: Path, pki: PKI) -> None:
    s = load_settings(write_config(tmp_path, pki), {})
    assert s.listen.max_header_bytes == 65536
    assert s.listen.event_loop == "auto"
    assert s.forwarding.upgrade_protocols == ("websocket",)
    assert s.upstream.upgrade_idle_timeout_seconds == 3600


def test_stalled_peer_keys_are_checked_with_their_names(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path,
        pki,
        listen={
            "send_timeout_seconds": 0,
            "body_timeout_seconds": -1,
            "request_buffer_bytes": 17 * 1048576,
        },
    )
    found = "\n".join(problems(path))
    for key in (
        "listen.send_timeout_seconds: must be greater than 0, got 0",
        "listen.body_timeout_seconds: must be greater than 0, got -1",
        "listen.request_buffer_bytes: must be 0 to 16777216, got 17825792",
    ):
        assert key in found, key


def test_stalled_peer_defaults(tmp_path: Path, pki: PKI) -> None:
    s = load_settings(write_config(tmp_path, pki), {})
    assert s.listen.send_timeout_seconds == 30
    assert s.listen.body_timeout_seconds == 30
    assert s.listen.request_buffer_bytes == 65536

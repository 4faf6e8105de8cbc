"""Several issuers, claim headers, lifetimes and the replay map as pure functions: the issuer
a token names, config checks (clash, duplicates, inheritance), claim encoding of hostile
values, lifetime refusals, and the bounded last-foreign-certificate map."""

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

from proxy.checks.replay import ForeignCertificates
from proxy.config import ConfigError, load_settings
from proxy.errors import AuthError, Reason
from proxy.headers import dropped_request_headers, kept_request_headers
from proxy.settings import IssuerSettings, trusted_issuers
from proxy.tokens.claim_headers import (
    MAX_VALUE_BYTES,
    claim_path_problem,
    encode_value,
    header_name_problem,
    render_claim_headers,
)
from proxy.tokens.claims import check_lifetime, token_id
from proxy.tokens.issuers import read_issuer
from proxy.tokens.jwt import check_header, read_header, verify_with_key

pytestmark = pytest.mark.e2e

KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = jwt.PyJWK(json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())))


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://a.example", "aud": "api", "exp": now + 60, "iat": now, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, KEY, algorithm="ES256")


def refusal(call: Any, *args: Any) -> Reason:
    with pytest.raises(AuthError) as info:
        call(*args)
    return info.value.reason


# --- which issuer ---------------------------------------------------------------------------


def test_the_unverified_iss_is_read_with_pyjwt() -> None:
    assert read_issuer(token()) == "https://a.example"


def test_a_token_without_iss_or_with_a_non_string_iss_is_refused_before_any_key() -> None:
    assert refusal(read_issuer, token(iss=None)) is Reason.MISSING_CLAIM
    odd = jwt.api_jws.encode(json.dumps({"iss": ["x"]}).encode(), KEY, algorithm="ES256")
    assert refusal(read_issuer, odd) is Reason.INVALID_TOKEN
    assert refusal(read_issuer, "a.b.c") is Reason.INVALID_TOKEN


# --- configuration ---------------------------------------------------------------------------


def write_config(tmp_path: Path, tokens: dict[str, Any], **sections: Any) -> Path:
    path = tmp_path / "c.yaml"
    tls = {"cert_file": "/dev/null", "key_file": "/dev/null", "client_ca_file": "/dev/null"}
    config = {"tls": tls, "tokens": tokens}
    path.write_text(yaml.safe_dump({**config, **sections}))
    return path


def problems(tmp_path: Path, tokens: dict[str, Any], **sections: Any) -> list[str]:
    try:
        load_settings(write_config(tmp_path, tokens, **sections), environ={})
    except ConfigError as exc:
        return [p for p in exc.problems if p.startswith(("tokens", "forwarding"))]
    return []


def test_single_issuer_keys_are_a_one_entry_list_named_0(tmp_path: Path) -> None:
    tokens = {"issuer": "https://a.example", "audience": "api", "max_lifetime_seconds": 600}
    assert problems(tmp_path, tokens) == []
    s = load_settings(write_config(tmp_path, tokens), environ={})
    [entry] = trusted_issuers(s.tokens)
    assert (entry.name, entry.issuer, entry.audience) == ("0", "https://a.example", ("api",))
    assert entry.max_lifetime_seconds == 600


def test_issuers_entries_inherit_the_tokens_level_rules_they_do_not_set(tmp_path: Path) -> None:
    tokens = {
        "algorithms": ["ES256"],
        "max_lifetime_seconds": 900,
        "issuers": [
            {"name": "corp", "issuer": "https://a.example", "audience": ["api", "api2"]},
            {"issuer": "https://b.example", "audience": "api", "max_lifetime_seconds": 60,
             "algorithms": ["RS256"], "leeway_seconds": 5},
        ],
    }  # fmt: skip
    s = load_settings(write_config(tmp_path, tokens), environ={})
    corp, second = trusted_issuers(s.tokens)
    assert (corp.name, corp.audience, corp.algorithms, corp.max_lifetime_seconds) == (
        "corp", ("api", "api2"), ("ES256",), 900,
    )  # fmt: skip
    assert (second.name, second.algorithms, second.max_lifetime_seconds) == ("1", ("RS256",), 60)
    assert (corp.leeway_seconds, second.leeway_seconds) == (30, 5)


def test_both_forms_set_is_a_clash_that_check_config_explains(tmp_path: Path) -> None:
    tokens = {
        "issuer": "https://a.example",
        "audience": "api",
        "issuers": [{"issuer": "https://b.example", "audience": "api"}],
    }
    path = write_config(tmp_path, tokens)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "tokens.issuers: the single-issuer keys tokens.issuer, tokens.audience are a " in (
        done.stderr
    )
    assert "set one form, not both" in done.stderr


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ({"issuers": [{"issuer": "https://a.example"}]}, "tokens.issuers[0].audience: required"),
        (
            {"issuers": [{"issuer": "https://a.example", "audience": "x"},
                         {"issuer": "https://a.example", "audience": "y"}]},
            "tokens.issuers[1].issuer: 'https://a.example' is also entry 0",
        ),
        (
            {"issuers": [{"name": "1", "issuer": "https://a.example", "audience": "x"},
                         {"issuer": "https://b.example", "audience": "y"}]},
            "tokens.issuers[1].name: '1' is also the name of entry 0",
        ),
        (
            {"issuers": [{"name": "a b", "issuer": "https://a.example", "audience": "x"}]},
            "tokens.issuers[0].name: 'a b' must be 1-63 letters",
        ),
        (
            {"issuers": [{"issuer": "https://a.example", "audience": "x",
                          "max_lifetime_seconds": -1}]},
            "tokens.issuers[0].max_lifetime_seconds: must be 0 (off) or more, got -1",
        ),
        (
            {"issuers": [
                {"issuer": "https://a.example", "audience": "x",
                 "introspection": {"enabled": True, "client_id": "c", "client_secret": "s"}},
                {"issuer": "https://b.example", "audience": "x",
                 "introspection": {"enabled": True, "client_id": "c", "client_secret": "s"}},
            ]},
            "tokens.issuers: introspection is enabled for 0, 1; an opaque token names no issuer",
        ),
        ({"issuers": [{"issuer": "https://a.example", "audience": "x", "jwks": "y"}]},
         "tokens.issuers[0].jwks: unknown key"),
        ({"issuers": "https://a.example"}, "tokens.issuers: expected a list of mappings"),
    ],
)  # fmt: skip
def test_bad_issuers_entries_are_reported_with_their_key_path(
    tmp_path: Path, tokens: dict[str, Any], expected: str
) -> None:
    found = problems(tmp_path, tokens)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("claim_headers", "expected"),
    [
        ({"X User": "email"}, "forwarding.claim_headers.X User: not an HTTP header name"),
        ({"X-Certbound-Email": "email"}, "forwarding.claim_headers.X-Certbound-Email: X-Certbound"),
        (
            {"Authorization": "sub"},
            "forwarding.claim_headers.Authorization: Authorization is owned",
        ),
        ({"Host": "sub"}, "forwarding.claim_headers.Host: Host is owned"),
        ({"X-Roles": "realm_access..roles"}, "forwarding.claim_headers.X-Roles: 'realm_access.."),
        ({"X-A": "a", "x-a": "b"}, "forwarding.claim_headers.x-a: named twice"),
        (["X-A"], "forwarding.claim_headers: expected a mapping of strings to strings"),
    ],
)
def test_bad_claim_headers_are_reported(tmp_path: Path, claim_headers: Any, expected: str) -> None:
    tokens = {"issuer": "https://a.example", "audience": "api"}
    found = problems(tmp_path, tokens, forwarding={"claim_headers": claim_headers})
    assert any(p.startswith(expected) for p in found), found


def test_forwarding_authorization_is_pass_or_strip(tmp_path: Path) -> None:
    tokens = {"issuer": "https://a.example", "audience": "api"}
    found = problems(tmp_path, tokens, forwarding={"authorization": "drop"})
    assert found == ["forwarding.authorization: pass or strip, got 'drop'"]


def test_claim_headers_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"issuer": "https://a.example", "audience": "api"})
    env = {"CERTBOUND_FORWARDING__CLAIM_HEADERS": "{X-User-Email: email, X-Roles: a.b}"}
    s = load_settings(path, environ=env)
    assert s.forwarding.claim_headers == (("X-User-Email", "email"), ("X-Roles", "a.b"))


# --- claim headers ---------------------------------------------------------------------------


def test_claim_values_cannot_inject_header_lines_or_non_ascii() -> None:
    lines = render_claim_headers(
        (("X-Email", "email"), ("X-Name", "name")),
        {"email": "a@b.example\r\nX-Certbound-Subject: admin", "name": "Jürgen\x00"},
    )
    assert lines == (
        b"X-Email: a@b.example%0D%0AX-Certbound-Subject: admin\r\nX-Name: J%C3%BCrgen%00\r\n"
    )


def test_lists_join_nested_values_are_json_and_commas_inside_items_are_encoded() -> None:
    assert encode_value(["a", "b,c", 3, True, None]) == "a, b%2Cc, 3, true"
    assert encode_value({"k": ["v", 1]}) == '{"k":["v"%2C1]}'
    assert encode_value([["x", "y"], {"z": "é"}]) == '["x"%2C"y"], {"z":"%C3%A9"}'
    assert encode_value(None) is None and encode_value([]) is None


def test_dotted_paths_walk_objects_and_an_exact_name_with_dots_wins() -> None:
    payload = {
        "realm_access": {"roles": ["admin", "user"]},
        "https://example.com/roles": ["x"],
        "email": 7,
    }
    lines = render_claim_headers(
        (("X-Roles", "realm_access.roles"), ("X-Ns", "https://example.com/roles"),
         ("X-Missing", "realm_access.nothing"), ("X-Email", "email")),
        payload,
    )  # fmt: skip
    assert lines == b"X-Roles: admin, user\r\nX-Ns: x\r\nX-Email: 7\r\n"


def test_a_value_over_the_bound_is_not_sent_rather_than_cut() -> None:
    huge = [f"role-{i:05d}" for i in range(MAX_VALUE_BYTES // 8)]
    assert render_claim_headers((("X-Roles", "roles"),), {"roles": huge}) == b""
    assert render_claim_headers((("X-Roles", "roles"),), {"roles": huge[:10]}).startswith(
        b"X-Roles: role-00000, role-00001"
    )


def test_claim_header_names_and_paths_are_checked() -> None:
    assert header_name_problem("X-User-Email") is None
    assert header_name_problem("X-User:Email") is not None
    assert header_name_problem("Content-Length") is not None
    assert claim_path_problem("a.b") is None and claim_path_problem(".a") is not None


def test_client_copies_of_claim_headers_and_with_strip_authorization_are_dropped() -> None:
    headers = ((b"X-User-Email", b"forged"), (b"Authorization", b"Bearer t"), (b"Accept", b"*/*"))
    lower = tuple(name.lower() for name, _ in headers)
    dropped = dropped_request_headers(frozenset({b"x-user-email"}), strip_authorization=True)
    assert kept_request_headers(headers, lower, frozenset(), dropped) == [b"Accept: */*\r\n"]
    passed = dropped_request_headers(frozenset(), strip_authorization=False)
    assert len(kept_request_headers(headers, lower, frozenset(), passed)) == 3


# --- lifetime and token id --------------------------------------------------------------------


def test_lifetime_is_exp_minus_iat_and_without_iat_what_is_left() -> None:
    check_lifetime(1600, 1000, 1000, 600, 30)  # exactly the bound
    assert refusal(check_lifetime, 1601, 1000, 1000, 600, 30) is Reason.LIFETIME_TOO_LONG
    check_lifetime(1630, None, 1000, 600, 30)  # no iat: exp - now, with leeway
    assert refusal(check_lifetime, 1631, None, 1000, 600, 30) is Reason.LIFETIME_TOO_LONG
    check_lifetime(10**9, 0, 0, 0, 0)  # 0: off


def test_a_long_lived_token_is_refused_by_its_issuers_rule() -> None:
    issuer = IssuerSettings(
        name="corp", issuer="https://a.example", audience=("api",), algorithms=("ES256",),
        max_lifetime_seconds=300,
    )  # fmt: skip
    long_lived = token(exp=int(time.time()) + 3600)
    alg = check_header(read_header(long_lived), issuer)
    with pytest.raises(AuthError) as info:
        verify_with_key(long_lived, alg, PUBLIC, issuer, time.time())
    assert info.value.reason is Reason.LIFETIME_TOO_LONG
    assert info.value.refusal.status == 401 and info.value.refusal.error == "invalid_token"
    claims = verify_with_key(token(jti="j-1"), alg, PUBLIC, issuer, time.time())
    assert (claims.issuer_name, claims.token_id) == ("corp", "j-1")


def test_token_id_is_the_jti_else_a_short_hash_never_the_token() -> None:
    assert token_id("abc", b"\x01" * 32) == "abc"
    assert token_id("", bytes(range(32))) == "sha256:0001020304050607"
    assert token_id(None, bytes(32)) == "sha256:" + "00" * 8


# --- the replay map ---------------------------------------------------------------------------


def test_a_second_foreign_certificate_within_the_window_is_a_switch() -> None:
    seen = ForeignCertificates(size=10, window=600)
    alice = ("corp", "jti-1")
    assert not seen.is_switch(alice, "BOB", 0)
    assert not seen.is_switch(alice, "BOB", 10)  # the same holder again
    assert seen.is_switch(alice, "CAROL", 20)
    assert seen.is_switch(alice, "BOB", 30)
    assert not seen.is_switch(alice, "CAROL", 1000)  # the last foreign one is long gone
    assert not seen.is_switch(("other", "jti-1"), "BOB", 1001)  # another issuer's jti


def test_the_replay_map_is_bounded() -> None:
    seen = ForeignCertificates(size=100, window=600)
    for i in range(10_000):
        seen.is_switch(("corp", f"t{i}"), "BOB", i)
    assert len(seen) == 100

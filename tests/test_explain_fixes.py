"""explain prints the proxy's own decision with a fix for its reason: every Reason the proxy can
answer with has a fix; refusals made by the real checks (a Pipeline built from the
configuration, keys from a JWKS file) come out under the check that made them; and what explain
says a running proxy answers is what it answers (real TLS, real JWKS endpoint, real upstream)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_settings
from proxy.errors import AuthError, Reason
from proxy.settings import PolicySettings, RouteSettings, Settings
from proxy.tools.explain import Request, explain
from proxy.tools.fixes import FIXES, fix_for
from proxy.tools.printer import Printer, View
from proxy.trace import Trace
from tests.support.stack import AUDIENCE, PKI, Issuer, StartProxy

pytestmark = pytest.mark.e2e

REFUSAL_REASONS = [reason for reason in Reason if reason is not Reason.OK]


def test_every_reason_but_ok_has_a_fix() -> None:
    assert set(FIXES) == set(REFUSAL_REASONS)


@pytest.mark.parametrize("reason", REFUSAL_REASONS, ids=lambda r: r.value)
def test_every_refusal_reason_is_printed_with_the_checks_words_and_a_fix(reason: Reason) -> None:
    lines: list[str] = []
    trace = Trace()
    trace.check("a check")
    printer = Printer(View(Settings()), lines.append, sections=False)
    printer.step(trace.steps[0], AuthError(reason, "as it said"))
    assert lines[0] == f"   a check     FAIL {reason.value}: as it said"
    assert lines[-1].startswith("   fix: ") and len(lines[-1]) > 20
    assert "{" not in lines[-1] and "}" not in lines[-1]


def test_a_fact_the_hint_names_but_the_check_did_not_record_reads_see_above() -> None:
    hint = fix_for(Reason.NO_MATCHING_ROUTE, "policy", {"method": "GET"})
    assert "GET (see above)" in hint


# --- refusals made by the real checks --------------------------------------------------------


@pytest.fixture
def file_issuer() -> Issuer:
    """An issuer whose keys explain reads from a JWKS file (its URL leads nowhere)."""
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    return issuer


def settings_for(tmp_path: Path, pki: PKI, issuer: Issuer, **sections: Any) -> Settings:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    cert, key = pki.files("server")
    config: dict[str, Any] = {
        "tls": {"cert_file": cert, "key_file": key, "client_ca_file": pki.ca_file},
        "tokens": {"issuer": issuer.url, "audience": AUDIENCE, "jwks_file": str(jwks)},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(str(path))


async def run(settings: Settings, pki: PKI, token: str, target: str = "/orders/7") -> list[str]:
    lines: list[str] = []
    request = Request(certificate=pki.alice.cert, token=token, target=target)
    lines.append(str(await explain(settings, request, lines.append)))
    return lines


ROUTES = {"routes": [{"path": "/orders/**", "scopes": ["orders:read"]}]}


@pytest.mark.parametrize(
    ("reason", "check", "sections", "claims", "target"),
    [
        ("malformed_request", "target", {}, {}, "orders/7"),
        ("malformed_request", "route", {"policy": ROUTES}, {}, "/orders/%2e%2e/admin"),
        ("no_matching_route", "policy", {"policy": ROUTES}, {}, "/admin"),
        (
            "client_not_allowed",
            "policy",
            {"policy": {"routes": [{"path": "/orders/**", "clients": ["billing"]}]}},
            {},
            "/orders/7",
        ),
        (
            "subject_not_allowed",
            "subject",
            {"policy": {"routes": [{"path": "/orders/**", "subjects": ["CN=bob"]}]}},
            {},
            "/orders/7",
        ),
        ("wrong_audience", "token", {}, {"aud": "https://other.example"}, "/orders/7"),
        ("unknown_issuer", "token", {}, {"iss": "https://other.invalid"}, "/orders/7"),
        ("expired", "token", {}, {"exp": 1000}, "/orders/7"),
        ("missing_cnf", "cnf.x5t#S256", {}, {"cnf": None}, "/orders/7"),
        ("invalid_cnf", "cnf.x5t#S256", {}, {"cnf": {"x5t#S256": "short"}}, "/orders/7"),
    ],
)
async def test_a_refusal_by_the_checks_is_printed_under_its_check_with_the_fix(
    tmp_path: Path,
    pki: PKI,
    file_issuer: Issuer,
    reason: str,
    check: str,
    sections: dict[str, Any],
    claims: dict[str, Any],
    target: str,
) -> None:
    settings = settings_for(tmp_path, pki, file_issuer, **sections)
    lines = await run(settings, pki, file_issuer.mint(pki.alice, **claims), target)
    assert lines[-1] == "1", lines
    failed = [i for i, line in enumerate(lines) if f"FAIL {reason}: " in line]
    assert len(failed) == 1, lines
    assert lines[failed[0]].startswith(f"   {check:<11} FAIL"), lines
    fix = next(line for line in lines[failed[0] :] if line.startswith("   fix: "))
    assert "(see above)" not in fix
    assert lines[-2].startswith("outcome: REFUSE ") and lines[-2].endswith(f"(reason {reason})")


async def test_a_hint_names_what_the_check_saw(
    tmp_path: Path, pki: PKI, file_issuer: Issuer
) -> None:
    settings = settings_for(tmp_path, pki, file_issuer, policy=ROUTES)
    out = "\n".join(await run(settings, pki, file_issuer.mint(pki.alice), "/admin/x"))
    assert "fix: no rule matches GET /admin/x and policy.unmatched is deny" in out
    out = "\n".join(await run(settings, pki, file_issuer.mint(pki.alice, scope="orders:write")))
    assert "route scopes: orders:read; token scope: orders:write" in out
    assert "every scope the route requires (orders:read)" in out


async def test_report_only_prints_the_refusal_and_forwards(
    tmp_path: Path, pki: PKI, file_issuer: Issuer
) -> None:
    settings = settings_for(tmp_path, pki, file_issuer, binding={"mode": "report_only"})
    lines = await run(settings, pki, file_issuer.mint(pki.bob))
    assert lines[-1] == "0", lines
    out = "\n".join(lines)
    assert "FAIL thumbprint_mismatch: token is bound to a different client certificate" in out
    assert "thumbprint_mismatch: would be refused, but binding.mode is report_only" in out
    assert "outcome: FORWARD (binding.mode report_only: enforce would refuse it" in out


async def test_public_route_is_forwarded_without_a_token_check(
    tmp_path: Path, pki: PKI, file_issuer: Issuer
) -> None:
    policy = {"routes": [{"path": "/health", "public": True}]}
    settings = settings_for(tmp_path, pki, file_issuer, policy=policy)
    lines = await run(settings, pki, "not-even-a-token", "/health")
    assert lines[-2:] == ["outcome: FORWARD (public route: no token checked)", "0"]
    assert not any(line.startswith("3. token") for line in lines)


# --- explain's answer is the running proxy's ------------------------------------------------


@pytest.mark.parametrize(
    ("who", "path", "claims"),
    [
        ("alice", "/orders/7", {}),
        ("bob", "/orders/7", {}),
        ("alice", "/orders/7", {"exp": int(time.time()) - 3600}),
        ("alice", "/orders/7", {"aud": "https://other.example"}),
        ("alice", "/orders/7", {"scope": "orders:list"}),
        ("alice", "/orders/7", {"cnf": None}),
        ("alice", "/admin", {}),
    ],
    ids=["forward", "other-cert", "expired", "audience", "scope", "unbound", "no-route"],
)
async def test_explain_answers_as_the_running_proxy_does(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, who: str, path: str, claims: dict[str, Any]
) -> None:
    policy = PolicySettings(routes=(RouteSettings(path="/orders/**", scopes=("orders:read",)),))
    running = await start_proxy(policy=policy)
    token = issuer.mint(pki.alice, **claims)
    status, headers, body = await running.request(path=path, who=who, token=token)
    lines: list[str] = []
    certificate = pki.alice.cert if who == "alice" else pki.bob.cert
    request = Request(certificate=certificate, token=token, target=path)
    code = await explain(running.proxy.settings, request, lines.append)
    if status == 200:
        assert (code, lines[-1]) == (0, "outcome: FORWARD"), lines
        return
    reason = body.decode().split(":", 1)[0].split()[1]
    assert code == 1 and lines[-1].startswith(f"outcome: REFUSE {status} "), lines
    assert lines[-1].endswith(f"(reason {reason})"), lines
    assert f"     WWW-Authenticate: {headers['WWW-Authenticate']}" in lines
    assert running.upstream.seen == []  # refused, and never forwarded

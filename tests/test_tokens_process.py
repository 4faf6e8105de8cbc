"""Tokens as deployments have them, through a real `certbound run` process driven by curl:
two issuers with their own JWKS endpoints, claim headers with hostile values, stripping the
Authorization header, lifetime refusals, and `certbound audit report` on the audit log of
real refused requests from several certificates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import server
from proxy.settings import IssuerSettings, TokenSettings
from proxy.tools.pki import issue
from tests.support.clients import curl, status_and_headers
from tests.support.process import ProxyProcess, metric, proxy_process
from tests.support.stack import (
    AUDIENCE,
    PKI,
    Issuer,
    Upstream,
    make_settings,
    serve_app,
    thumbprint,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLAIM_HEADERS = {
    "X-User-Email": "email",
    "X-User-Name": "name",
    "X-Roles": "realm_access.roles",
    "X-Profile": "profile",
    "X-Big": "big",
}


@pytest.fixture
async def partner() -> AsyncIterator[Issuer]:
    """A second issuer with its own JWKS endpoint (and the same kid, k1, as the first)."""
    iss = Issuer()
    iss.add_key("k1")
    runner, port = await serve_app(iss.app())
    iss.url = f"http://127.0.0.1:{port}"
    yield iss
    await runner.cleanup()


def config(pki: PKI, corp: Issuer, partner: Issuer, upstream: Upstream, **forwarding: Any) -> Any:
    cert, key = pki.files("server")
    return {
        "tls": {"cert_file": cert, "key_file": key, "client_ca_file": pki.ca_file},
        "upstream": {"url": upstream.url},
        "tokens": {
            "max_lifetime_seconds": 3600,  # the default of every entry that sets none
            "issuers": [
                {
                    "name": "corp",
                    "issuer": corp.url,
                    "audience": [AUDIENCE, "https://other.example"],
                    "jwks_uri": corp.url + "/jwks.json",
                },
                # unnamed: called "1"; keys found by discovery; short-lived tokens only
                {"issuer": partner.url, "audience": AUDIENCE, "max_lifetime_seconds": 300},
            ],
        },
        "forwarding": {"claim_headers": CLAIM_HEADERS, **forwarding},
    }


Started = Callable[..., Any]


@pytest.fixture
async def start(
    pki: PKI, issuer: Issuer, partner: Issuer, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[Started]:
    """Start the process from a thread: readiness needs both JWKS endpoints, which are served
    by this test's event loop."""
    with contextlib.ExitStack() as stack:

        async def run(**forwarding: Any) -> ProxyProcess:
            cm = proxy_process(tmp_path, config(pki, issuer, partner, upstream, **forwarding))
            return await asyncio.to_thread(stack.enter_context, cm)

        yield run
        await asyncio.to_thread(stack.close)


async def get(proc: ProxyProcess, pki: PKI, token: str, *extra: str, who: str = "alice") -> Any:
    done = await curl(pki, "-H", f"Authorization: Bearer {token}", *extra, proc.url + "/x", who=who)
    return status_and_headers(done)


def audit_lines(proc: ProxyProcess) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in proc.output().splitlines()
        if line.startswith("{") and '"log":"audit"' in line
    ]


async def sample(proc: ProxyProcess, name: str) -> float:
    return await asyncio.to_thread(metric, proc, name)


def requests(issuer: str, outcome: str, reason: str) -> str:
    return f'certbound_requests_total{{issuer="{issuer}",outcome="{outcome}",reason="{reason}"}}'


# --- several issuers -------------------------------------------------------------------------


async def test_each_issuer_verifies_with_its_own_keys_and_an_unknown_iss_fetches_nothing(
    pki: PKI, issuer: Issuer, partner: Issuer, upstream: Upstream, start: Started
) -> None:
    proc = await start()
    hits = (issuer.jwks_hits, partner.jwks_hits)
    assert hits[0] >= 1 and hits[1] >= 1  # ready only once both key sets were loaded
    short = int(time.time()) + 200
    assert (await get(proc, pki, issuer.mint(pki.alice)))[0] == 200
    assert (await get(proc, pki, partner.mint(pki.alice, exp=short)))[0] == 200
    # The corp issuer's key signs a token that claims to come from the partner: the partner's
    # keys (same kid) judge it, and refuse it.
    forged = issuer.mint(pki.alice, iss=partner.url, exp=short)
    status, headers, body = await get(proc, pki, forged)
    assert (status, body.split(":")[0]) == (401, "401 invalid_signature")
    assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    # An iss nobody configured, with a kid nobody has: refused before any key is looked at.
    stranger = issuer.mint(pki.alice, iss="https://evil.example", headers={"kid": "nope"})
    status, headers, body = await get(proc, pki, stranger)
    assert (status, body) == (401, "401 unknown_issuer: token issuer is not trusted\n")
    assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert (issuer.jwks_hits, partner.jwks_hits) == hits  # no fetch, no refetch
    assert len(upstream.seen) == 2
    for name, value in (
        (requests("corp", "forwarded", "ok"), 1),
        (requests("1", "forwarded", "ok"), 1),
        (requests("1", "rejected", "invalid_signature"), 1),
        (requests("", "rejected", "unknown_issuer"), 1),
        ('certbound_jwks_keys{issuer="corp"}', 1),
        ('certbound_jwks_keys{issuer="1"}', 1),
    ):
        assert await sample(proc, name) == value, name
    lines = audit_lines(proc)
    assert [(a["reason"], a["issuer"]) for a in lines] == [
        ("invalid_signature", "1"),
        ("unknown_issuer", ""),
    ]
    assert "evil.example" not in proc.output()  # never a URL taken from a token
    assert "evil.example" not in await asyncio.to_thread(proc.metrics)


async def test_readiness_waits_for_every_issuers_keys(
    pki: PKI, issuer: Issuer, partner: Issuer, upstream: Upstream
) -> None:
    partner.available = False
    entries = (
        IssuerSettings(issuer=issuer.url, audience=(AUDIENCE,), jwks_uri=issuer.url + "/jwks.json"),
        IssuerSettings(name="p", issuer=partner.url, audience=(AUDIENCE,)),
    )
    settings = replace(make_settings(pki, issuer, upstream), tokens=TokenSettings(issuers=entries))
    proxy = await server.start(settings)
    try:
        admin = f"http://127.0.0.1:{proxy.admin_port}/readyz"
        async with aiohttp.ClientSession() as s:
            await asyncio.sleep(0.3)
            async with s.get(admin) as resp:
                assert (resp.status, await resp.text()) == (
                    503,
                    "signing keys not loaded: issuer p\n",
                )
            partner.available = True
            await asyncio.wait_for(proxy.keys.wait_loaded(), 5)
            async with s.get(admin) as resp:
                assert resp.status == 200
    finally:
        await server.stop(proxy, grace_seconds=1)


# --- claims for the workload ------------------------------------------------------------------


async def test_hostile_claim_values_reach_the_workload_encoded_and_client_copies_never(
    pki: PKI, issuer: Issuer, upstream: Upstream, start: Started
) -> None:
    proc = await start()
    token = issuer.mint(
        pki.alice,
        email="alice@example.com\r\nX-Injected: 1",
        name="Zoë \x7f\t",
        realm_access={"roles": ["admin", "ops,dev", None, 7]},
        profile={"team": {"tags": ["a", {"b": "ü"}]}},
        big="x" * 20000,
    )
    forged = (
        "-H", "X-User-Email: mallory@example.com",
        "-H", "x-roles: root",
        "-H", "X-Big: forged",
    )  # fmt: skip
    # Twice on one connection: the second is a cache hit with the per-connection header memo.
    done = await curl(
        pki, "-H", f"Authorization: Bearer {token}", *forged, proc.url + "/a", proc.url + "/b"
    )
    assert done.count("HTTP/1.1 200") == 2, done
    assert len(upstream.seen) == 2
    for seen in upstream.seen:
        h = seen.headers
        assert h["x-user-email"] == ["alice@example.com%0D%0AX-Injected: 1"]
        assert "x-injected" not in h
        assert h["x-user-name"] == ["Zo%C3%AB %7F%09"]
        assert h["x-roles"] == ["admin, ops%2Cdev, 7"]
        assert h["x-profile"] == ['{"team":{"tags":["a"%2C{"b":"%C3%BC"}]}}']
        assert "x-big" not in h  # over the bound: not sent, and the client's copy is gone
        assert h["authorization"] == [f"Bearer {token}"]  # forwarding.authorization: pass
    assert "claim big is 20000 bytes once encoded" in proc.output()


async def test_claim_headers_absent_from_the_token_are_not_sent_and_strip_drops_the_token(
    pki: PKI, issuer: Issuer, upstream: Upstream, start: Started
) -> None:
    proc = await start(authorization="strip")
    token = issuer.mint(pki.alice)
    status, _, _ = await get(proc, pki, token, "-H", "X-User-Email: forged")
    assert status == 200
    h = upstream.seen[0].headers
    assert "authorization" not in h
    assert not any(name.startswith(("x-user-", "x-roles")) for name in h)
    assert h["x-certbound-subject"] == ["alice"]
    assert token not in proc.output()


# --- short-lived tokens -----------------------------------------------------------------------


async def test_tokens_living_longer_than_their_issuer_allows_are_refused_and_never_forwarded(
    pki: PKI, issuer: Issuer, partner: Issuer, upstream: Upstream, start: Started
) -> None:
    proc = await start()
    now = int(time.time())
    cases = [
        partner.mint(pki.alice),  # exp - iat = 600 > 300
        partner.mint(pki.alice, iat=None, exp=now + 600),  # no iat: exp - now > 300 + 30
        issuer.mint(pki.alice, exp=now + 7200),  # over the tokens-level 3600
    ]
    for token in cases:
        status, headers, body = await get(proc, pki, token)
        assert status == 401, body
        assert body.startswith("401 lifetime_too_long: token lifetime is over the ")
        assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert upstream.seen == []
    assert await sample(proc, requests("1", "rejected", "lifetime_too_long")) == 2
    assert await sample(proc, requests("corp", "rejected", "lifetime_too_long")) == 1
    assert (await get(proc, pki, partner.mint(pki.alice, exp=now + 300)))[0] == 200


# --- replay correlation -----------------------------------------------------------------------


def report(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "report", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


async def test_audit_report_names_the_replayed_token_and_every_certificate_that_tried_it(
    pki: PKI, issuer: Issuer, upstream: Upstream, start: Started, tmp_path: Path
) -> None:
    carol = issue(pki.ca, "carol")
    carol.write(tmp_path, "carol")
    as_carol = ("--cert", str(tmp_path / "carol.pem"), "--key", str(tmp_path / "carol.key"))
    proc = await start()
    stolen = issuer.mint(pki.alice, jti="alice-token-1")
    other = issuer.mint(pki.alice, jti=None)  # no jti: named by a short hash
    assert (await get(proc, pki, stolen))[0] == 200  # alice herself
    for who in ("bob", "bob"):
        assert (await get(proc, pki, stolen, who=who))[0] == 401
    done = await curl(pki, "-H", f"Authorization: Bearer {stolen}", *as_carol, proc.url, who=None)
    assert status_and_headers(done)[0] == 401
    assert (await get(proc, pki, other, who="bob"))[0] == 401
    assert len(upstream.seen) == 1
    # bob, bob, carol: one switch to a second foreign certificate
    switches = 'certbound_foreign_certificate_switches_total{issuer="corp"}'
    assert await sample(proc, switches) == 1

    log = tmp_path / "pod-a.log"
    log.write_text(proc.output())
    text = report(str(log))
    assert text.returncode == 0, text.stderr
    out = text.stdout.decode()
    (tmp_path / "report.txt").write_text(out)  # printed in the issue's closing note
    assert "Tokens presented with a certificate they are not bound to: 2" in out
    assert "token alice-token-1  (issuer corp)" in out
    assert f"bound to     {thumbprint(pki.alice)}" in out
    assert "presented by 2 other certificates, 3 times" in out
    assert f"{thumbprint(pki.bob)}  2 distinct tokens, 3 times" in out
    assert stolen not in out and other not in out

    data = json.loads(report(str(log), "--json").stdout)
    first = data["tokens"][0]
    assert (first["token_id"], first["issuer"], first["subject"], first["client_id"]) == (
        "alice-token-1", "corp", "alice", "orders-app",
    )  # fmt: skip
    by = {p["thumbprint"]: p for p in first["presented_by"]}
    assert set(by) == {thumbprint(pki.bob), thumbprint(carol)}
    assert (by[thumbprint(pki.bob)]["count"], by[thumbprint(carol)]["count"]) == (2, 1)
    assert by[thumbprint(pki.bob)]["peers"] == ["127.0.0.1"]
    assert data["tokens"][1]["token_id"].startswith("sha256:")
    certs = {c["thumbprint"]: c["distinct_tokens"] for c in data["certificates"]}
    assert certs == {thumbprint(pki.bob): 2, thumbprint(carol): 1}

    # Two pods' logs concatenated with junk between them, from stdin: counted, not fatal.
    both = log.read_bytes() + b"\x00\xff not json\n{broken thumbprint_mismatch\n" + log.read_bytes()
    merged = json.loads(report("-", "--json", stdin=both).stdout)
    assert merged["unreadable_lines"] == 2
    assert merged["binding_mismatches"] == 2 * data["binding_mismatches"] == 8
    assert merged["tokens"][0]["presentations"] == 6
    later = json.loads(report(str(log), "--json", "--since", "2999-01-01T00:00:00Z").stdout)
    assert (later["binding_mismatches"], later["before_since"]) == (0, 4)

"""The whole request path through a running proxy: real mTLS, real JWKS, real upstream."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import replace

import aiohttp
import pytest
from cryptography import x509

from proxy.tokens.refetch import REFETCH_BURST
from proxy.tools.pki import issue
from proxy.trust import identity as identity_module
from tests.support.stack import (
    NO_CREDENTIALS,
    PKI,
    Issuer,
    Running,
    StartProxy,
    Upstream,
    make_settings,
    thumbprint,
)

pytestmark = pytest.mark.e2e


def www(headers: dict[str, str]) -> str:
    return headers.get("WWW-Authenticate", "")


async def test_bound_token_with_its_certificate_is_forwarded_with_identity_headers(
    running: Running,
) -> None:
    token = running.issuer.mint(running.pki.alice, sub="alice", scope="orders:read orders:write")
    status, _, body = await running.request(path="/orders/7?x=1", token=token)
    assert status == 200, body
    [seen] = running.upstream.seen
    assert seen.path == "/orders/7?x=1"
    assert seen.headers["x-certbound-subject"] == ["alice"]
    assert seen.headers["x-certbound-client-id"] == ["orders-app"]
    assert seen.headers["x-certbound-scope"] == ["orders:read orders:write"]
    assert seen.headers["x-certbound-thumbprint"] == [thumbprint(running.pki.alice)]
    assert seen.headers["x-forwarded-proto"] == ["https"]
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert "client-cert" not in seen.headers  # off unless forwarding.client_cert_header


async def test_token_bound_to_other_cert_is_rejected_and_never_forwarded(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    status, headers, body = await running.request(who="bob", token=token)
    assert status == 401
    assert www(headers).startswith('Bearer error="invalid_token"')
    assert b"thumbprint_mismatch" in body
    assert running.upstream.seen == []


async def test_no_token_gets_bare_bearer_and_dpop_challenges_and_is_not_forwarded(
    running: Running,
) -> None:
    status, headers, _ = await running.request(token=None)
    assert status == 401
    # RFC 6750 §3.1: no error code when no credentials; RFC 9449 §7.1: DPoP is taken too.
    assert www(headers) == NO_CREDENTIALS
    assert running.upstream.seen == []


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"cnf": None}, "missing_cnf"),
        ({"cnf": "abc"}, "invalid_cnf"),
        ({"cnf": {"jkt": "x" * 43}}, "dpop_token_as_bearer"),
        ({"cnf": {"x5t#S256": 5}}, "invalid_cnf"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ({"iss": "https://evil.example"}, "unknown_issuer"),
        ({"aud": "https://other.example"}, "wrong_audience"),
        ({"exp": None}, "missing_claim"),
    ],
)
async def test_bad_claims_are_invalid_token_and_never_forwarded(
    running: Running, claims: dict[str, object], reason: str
) -> None:
    token = running.issuer.mint(running.pki.alice, **claims)
    status, headers, body = await running.request(token=token)
    assert status == 401, body
    assert 'error="invalid_token"' in www(headers)
    assert reason.encode() in body
    assert running.upstream.seen == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + "=",  # padded
        lambda t: t.replace("-", "+").replace("_", "/"),  # standard alphabet
        lambda t: t.swapcase(),
        lambda t: t + " ",
    ],
    ids=["padded", "std-base64", "case", "trailing-space"],
)
async def test_thumbprint_spellings_other_than_exact_base64url_are_refused(
    running: Running, mangle: object
) -> None:
    # A certificate whose thumbprint has both "-" and "_", so every spelling really differs.
    while True:
        cert = issue(running.pki.ca, "carol")
        if {"-", "_"} <= set(thumbprint(cert)):
            break
    cert.write(running.pki.dir, "carol")
    tp = mangle(thumbprint(cert))  # type: ignore[operator]
    assert tp != thumbprint(cert)
    token = running.issuer.mint(cert, cnf={"x5t#S256": tp})
    status, headers, _ = await running.request(who="carol", token=token)
    assert status == 401
    assert 'error="invalid_token"' in www(headers)
    assert running.upstream.seen == []


async def test_signature_by_unpublished_key_is_unknown_key(running: Running) -> None:
    running.issuer.add_key("rogue", publish=False)
    token = running.issuer.mint(running.pki.alice, kid="rogue")
    status, _, body = await running.request(token=token)
    assert (status, b"unknown_key" in body) == (401, True)
    assert running.upstream.seen == []


async def test_tampered_signature_is_rejected(running: Running) -> None:
    header, _, sig = running.issuer.mint(running.pki.alice).split(".")
    forged = running.issuer.mint(running.pki.alice, sub="admin").split(".")[1]
    status, _, body = await running.request(token=f"{header}.{forged}.{sig}")
    assert (status, b"invalid_signature" in body) == (401, True)
    assert running.upstream.seen == []


async def test_alg_none_is_rejected(running: Running) -> None:
    import base64
    import json

    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = running.issuer.claims(running.pki.alice)
    token = f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(claims)}."
    status, headers, body = await running.request(token=token)
    assert status == 401 and b"disallowed_algorithm" in body
    assert 'error="invalid_token"' in www(headers)
    assert running.upstream.seen == []


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ([("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer a.b.c")], "/orders"),
        ([("Authorization", "Basic YWxpY2U6cHc=")], "/orders"),
        ([("Authorization", "Bearer")], "/orders"),
        ([("Authorization", "Bearer a b")], "/orders"),
        ([], "/orders?access_token=abc"),
        ([("Authorization", "Bearer eyJh!.eyJh.c2ln")], "/orders"),
        ([("Authorization", "DPoP eyJh.eyJh.c2ln~!")], "/orders"),
    ],
    ids=["two-headers", "basic", "empty", "two-tokens", "query", "not-b64token", "dpop-not-b64"],
)
async def test_malformed_requests_are_400_invalid_request(
    running: Running, headers: list[tuple[str, str]], path: str
) -> None:
    status, hdrs, _ = await running.request(path=path, headers=headers)
    assert status == 400
    assert 'error="invalid_request"' in www(hdrs)
    assert running.upstream.seen == []


@pytest.mark.parametrize("token", ["eyJh+.eyJh.c2ln", "eyJh.eyJh.c2ln==", "a.b.c.d"])
async def test_a_b64token_that_is_not_a_compact_jws_is_401_invalid_token(
    running: Running, token: str
) -> None:
    """RFC 6750 b64token allows `+`, `/`, `=`: such a token passes extraction (the miss path
    skips extract_credentials only for base64url and dots) and is refused as no JWT."""
    status, hdrs, _ = await running.request(token=token)
    assert status == 401
    assert 'error="invalid_token"' in www(hdrs)
    assert running.upstream.seen == []


async def test_form_body_is_never_read_for_a_token_and_streams_intact(running: Running) -> None:
    """RFC 6750 §2.2 form tokens are not accepted, and bodies are never buffered to look for
    one: an access_token field is data for the workload; the token comes from Authorization."""
    token = running.issuer.mint(running.pki.alice)
    status, _, body = await running.request(
        "POST", token=token, data={"access_token": "opaque-data", "q": "1"}
    )
    assert status == 200, body
    assert running.upstream.seen[0].body_bytes == len(b"access_token=opaque-data&q=1")


async def test_form_token_without_authorization_is_401_and_never_forwarded(
    running: Running,
) -> None:
    token = running.issuer.mint(running.pki.alice)
    status, hdrs, _ = await running.request("POST", data={"access_token": token, "q": "1"})
    assert status == 401 and www(hdrs) == NO_CREDENTIALS
    assert running.upstream.seen == []


async def test_plain_form_body_is_forwarded_intact(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    status, _, body = await running.request("POST", token=token, data={"q": "1", "r": "two"})
    assert status == 200, body
    assert running.upstream.seen[0].body_bytes == len(b"q=1&r=two")


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        (None, "no_certificate"),
        ("stranger", "unknown_ca"),
        ("expired", "expired"),
        ("server_only", "bad_purpose"),
    ],
)
async def test_bad_client_certificates_fail_the_handshake_and_never_reach_upstream(
    running: Running, who: str | None, reason: str
) -> None:
    token = running.issuer.mint(running.pki.alice)
    sample = f'certbound_tls_handshake_failures_total{{reason="{reason}"}}'
    before = await running.metric(sample)
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await running.request(who=who, token=token)
    assert running.upstream.seen == []
    await asyncio.sleep(0.05)
    assert await running.metric(sample) >= before + 1  # aiohttp may retry once


async def test_spoofed_identity_headers_are_replaced(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice, sub="alice")
    spoofed = [
        ("X-Certbound-Subject", "root"),
        ("x-certbound-scope", "admin"),
        ("X-Certbound-Extra", "1"),
        ("Client-Cert", ":AAAA:"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
    ]
    status, _, _ = await running.request(token=token, headers=spoofed)
    assert status == 200
    seen = running.upstream.seen[0].headers
    assert seen["x-certbound-subject"] == ["alice"]
    assert seen["x-certbound-scope"] == ["orders:read"]
    assert "x-certbound-extra" not in seen and "client-cert" not in seen
    assert "forwarded" not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]


async def test_connection_header_cannot_remove_identity_headers(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice, sub="alice")
    headers = [
        ("Connection", "keep-alive, X-Certbound-Subject, X-Certbound-Thumbprint, X-Secret"),
        ("X-Secret", "hop"),
        ("Keep-Alive", "timeout=5"),
    ]
    status, _, _ = await running.request(token=token, headers=headers)
    assert status == 200
    seen = running.upstream.seen[0].headers
    assert seen["x-certbound-subject"] == ["alice"]
    assert seen["x-certbound-thumbprint"] == [thumbprint(running.pki.alice)]
    assert "x-secret" not in seen and "keep-alive" not in seen


async def test_claims_with_newlines_cannot_inject_headers(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice, sub="eve\r\nX-Admin: 1", client_id="é")
    status, _, _ = await running.request(token=token)
    assert status == 200
    seen = running.upstream.seen[0].headers
    assert "x-admin" not in seen
    assert seen["x-certbound-subject"] == ["eve%0D%0AX-Admin: 1"]
    assert seen["x-certbound-client-id"] == ["%C3%A9"]


async def test_key_rotation_accepts_tokens_from_new_kid_without_restart(running: Running) -> None:
    running.issuer.add_key("k2")
    token = running.issuer.mint(running.pki.alice, kid="k2")
    status, _, body = await running.request(token=token)
    assert status == 200, body
    old = running.issuer.mint(running.pki.alice, kid="k1")
    assert (await running.request(token=old))[0] == 200


async def test_random_kids_at_once_share_a_bounded_number_of_refetches(running: Running) -> None:
    before = running.issuer.jwks_hits
    running.issuer.add_key("late", publish=False)
    forged = [
        running.issuer.mint(running.pki.alice, kid="late", headers={"kid": f"r{i}"})
        for i in range(30)
    ]
    answers = await asyncio.gather(*(running.request(token=token) for token in forged))
    assert [status for status, _, _ in answers] == [401] * 30
    assert all(body.startswith(b"401 unknown_key:") for _, _, body in answers)
    # Each waits for a fetch that began after it arrived; they share them, within the budget.
    assert 1 <= running.issuer.jwks_hits - before <= REFETCH_BURST
    assert running.upstream.seen == []


async def test_key_set_change_flushes_the_token_cache(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    assert (await running.request(token=token))[0] == 200
    # The issuer withdraws k1 (compromised) and publishes k2; a refresh must drop cached k1 tokens.
    running.issuer.served = []
    running.issuer.add_key("k2")
    await running.proxy.keys.refresh()
    status, _, body = await running.request(token=token)
    assert status == 401 and b"unknown_key" in body


async def test_thumbprint_is_computed_once_per_connection(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.trust import handshake as handshake_module

    calls = 0
    real = identity_module.identity_from_certificate

    def counting(cert: x509.Certificate, der: bytes) -> identity_module.ClientIdentity:
        nonlocal calls
        calls += 1
        return real(cert, der)

    monkeypatch.setattr(handshake_module, "identity_from_certificate", counting)
    token = running.issuer.mint(running.pki.alice)
    connector = aiohttp.TCPConnector(ssl=running.client_ssl("alice"), limit=1)
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(20):
            async with s.get(running.url + "/x", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
    assert calls == 1
    assert len(running.upstream.seen) == 20


async def test_upstream_down_is_502_and_proxy_keeps_serving(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    pool = running.proxy.plane.pool  # fresh: no kept-alive connection to the real upstream
    real, pool.port = pool.port, 1  # nothing listens on port 1
    status, _, body = await running.request(token=token)
    assert status == 502 and b"Traceback" not in body
    pool.port = real
    assert (await running.request(token=token))[0] == 200
    assert await running.metric('certbound_upstream_errors_total{kind="connect"}') >= 1


@pytest.mark.slow
async def test_slow_upstream_is_504(running: Running) -> None:
    running.upstream.delay = 3.0  # the test settings give the upstream 2 s
    token = running.issuer.mint(running.pki.alice)
    status, _, body = await running.request(token=token)
    assert status == 504 and b"upstream_timeout" in body
    running.upstream.delay = 0
    assert (await running.request(token=token))[0] == 200


async def test_streaming_response_is_relayed(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    status, _, body = await running.request(path="/stream?chunks=50", token=token)
    assert status == 200 and body == b"x" * 1024 * 50


async def test_admin_port_serves_health_and_metrics_without_client_cert(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    await running.request(token=token)
    await running.request(token=None)
    async with aiohttp.ClientSession() as s:
        for path in ("/healthz", "/readyz"):
            async with s.get(running.admin + path) as r:
                assert r.status == 200
    assert (
        await running.metric('certbound_requests_total{issuer="0",outcome="forwarded",reason="ok"}')
        >= 1
    )
    assert (
        await running.metric(
            'certbound_requests_total{issuer="",outcome="rejected",reason="no_token"}'
        )
        >= 1
    )
    assert await running.metric('certbound_jwks_keys{issuer="0"}') == 1


async def test_metrics_are_not_served_on_the_mtls_port(running: Running) -> None:
    token = running.issuer.mint(running.pki.alice)
    status, _, _ = await running.request(path="/metrics", token=token)
    assert status == 200  # forwarded to the workload like any path, never answered by us
    assert running.upstream.seen[0].path == "/metrics"


# --- one kept-alive connection: the checks' memory of its token ------------------------------


async def kept_alive(running: Running) -> aiohttp.ClientSession:
    """One connection for every request of the session."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=running.client_ssl("alice"), limit=1)
    )


async def get(session: aiohttp.ClientSession, running: Running, token: str) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(running.url + "/x", headers=headers) as resp:
        return resp.status, await resp.read()


async def test_key_set_change_refuses_the_token_again_on_the_same_connection(
    running: Running,
) -> None:
    token = running.issuer.mint(running.pki.alice)
    async with await kept_alive(running) as session:
        assert (await get(session, running, token))[0] == 200
        assert (await get(session, running, token))[0] == 200
        running.issuer.served = []
        running.issuer.add_key("k2")
        await running.proxy.keys.refresh()
        status, body = await get(session, running, token)
    assert status == 401 and b"unknown_key" in body
    assert len(running.upstream.seen) == 2


@pytest.mark.slow
async def test_token_expiring_mid_connection_is_refused_on_that_connection(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    tokens = make_settings(pki, issuer, upstream).tokens
    running = await start_proxy(tokens=replace(tokens, leeway_seconds=0))
    token = running.issuer.mint(running.pki.alice, exp=int(time.time()) + 2)
    async with await kept_alive(running) as session:
        assert (await get(session, running, token))[0] == 200
        await asyncio.sleep(2.5)
        status, body = await get(session, running, token)
    assert status == 401 and b"expired" in body
    assert len(running.upstream.seen) == 1


async def test_another_token_on_the_same_connection_gets_every_check(running: Running) -> None:
    good = running.issuer.mint(running.pki.alice)
    foreign = running.issuer.mint(running.pki.bob)
    async with await kept_alive(running) as session:
        assert (await get(session, running, good))[0] == 200
        status, body = await get(session, running, foreign)
        assert status == 401 and b"thumbprint_mismatch" in body
        assert (await get(session, running, good))[0] == 200
    assert len(running.upstream.seen) == 2


async def test_with_the_token_cache_off_every_request_is_verified_again(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    """tokens.cache_size: 0 turns off the connection's token memo too: on one kept-alive
    connection, every request's token is verified again (counted on the real verifier)."""
    tokens = make_settings(pki, issuer, upstream).tokens
    running = await start_proxy(tokens=replace(tokens, cache_size=0))
    token = running.issuer.mint(running.pki.alice)
    async with await kept_alive(running) as session:
        assert (await get(session, running, token))[0] == 200
        verified = running.proxy.pipeline.verifier
        calls = 0
        real = verified.verify_now  # a miss whose key is at hand: verified without a task

        def counting(t: str) -> object:
            nonlocal calls
            calls += 1
            return real(t)

        verified.verify_now = counting  # type: ignore[method-assign,assignment]
        assert (await get(session, running, token))[0] == 200
        assert (await get(session, running, token))[0] == 200
    assert calls == 2

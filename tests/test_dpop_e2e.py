"""DPoP (RFC 9449) through a running proxy: real TLS (with and without a client certificate),
tokens minted with cnf.jkt by the test issuer, proofs made as a client makes them (PyJWT and
cryptography keys), a real upstream that must never see a refused request."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.dpop_clients import Client
from tests.support.dpop_proofs import public_jwk, thumbprint
from tests.support.stack import PKI, Issuer, Running, StartProxy, Upstream, make_settings

pytestmark = pytest.mark.e2e


@pytest.fixture
async def dpop(start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream) -> Running:
    tls = replace(make_settings(pki, issuer, upstream).tls, client_cert="optional")
    return await start_proxy(tls=tls)


async def test_good_proof_without_certificate_is_forwarded(dpop: Running) -> None:
    client = Client(dpop)
    status, _, body = await client.send([client.proof()])
    assert status == 200, body
    [seen] = dpop.upstream.seen
    assert seen.headers["x-certbound-binding"] == ["bound"]
    assert "x-certbound-thumbprint" not in seen.headers


async def test_good_proof_with_a_certificate_is_forwarded(dpop: Running) -> None:
    client = Client(dpop)
    status, _, body = await client.send([client.proof()], who="alice")
    assert status == 200, body


async def test_rsa_key_and_post_are_forwarded(dpop: Running) -> None:
    client = Client(dpop, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    proof = client.proof("POST", client.url("/orders/7"), alg="PS256")
    status, _, body = await client.send([proof], method="POST", path="/orders/7?q=1")
    assert status == 200, body


async def test_every_request_needs_a_fresh_proof_though_the_token_is_cached(
    dpop: Running,
) -> None:
    client = Client(dpop)
    connector = aiohttp.TCPConnector(ssl=dpop.client_ssl(None), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(proof: str) -> int:
            headers = {"Authorization": f"DPoP {client.token}", "DPoP": proof}
            async with session.get(client.url(), headers=headers) as resp:
                await resp.read()
                return resp.status

        first = client.proof()
        assert await get(first) == 200
        assert await get(client.proof()) == 200  # token from the cache, proof checked
        assert await get(first) == 401  # same kept-alive connection: still a replay
    assert len(dpop.upstream.seen) == 2


def _hostile() -> list[Any]:
    other = ec.generate_private_key(ec.SECP256R1())

    # iat relative to when the case runs, not to collection: the suite takes minutes.
    def now() -> int:
        return int(time.time())

    return [
        ("wrong_htm", lambda c: [c.proof("POST")], "dpop_wrong_method"),
        ("htu_query", lambda c: [c.proof(htu=c.url("/orders?a=1"))], "dpop_wrong_url"),
        ("htu_fragment", lambda c: [c.proof(htu=c.url("/orders#x"))], "dpop_wrong_url"),
        (
            "htu_other_host",
            lambda c: [c.proof(htu="https://evil.example/orders")],
            "dpop_wrong_url",
        ),
        ("htu_other_path", lambda c: [c.proof(htu=c.url("/admin"))], "dpop_wrong_url"),
        ("htu_http", lambda c: [c.proof(htu=c.url().replace("https", "http"))], "dpop_wrong_url"),
        ("stale_iat", lambda c: [c.proof(iat=now() - 400)], "dpop_proof_expired"),
        ("future_iat", lambda c: [c.proof(iat=now() + 120)], "dpop_proof_not_yet_valid"),
        ("no_ath", lambda c: [c.proof(ath=None)], "dpop_wrong_ath"),
        ("wrong_ath", lambda c: [c.proof(token="another.token.value")], "dpop_wrong_ath"),
        ("no_jti", lambda c: [c.proof(jti=None)], "invalid_dpop_proof"),
        ("alg_none", lambda c: [_unsigned(c)], "dpop_disallowed_algorithm"),
        ("hs256", lambda c: [c.proof(alg="HS256", signer=b"k" * 32)], "dpop_disallowed_algorithm"),
        ("other_signer", lambda c: [c.proof(signer=other)], "dpop_invalid_signature"),
        ("private_jwk", lambda c: [c.proof(header={"jwk": _private(c)})], "dpop_private_key"),
        (
            "other_jwk",
            lambda c: [c.proof(signer=other, header={"jwk": public_jwk(other)})],
            "dpop_key_mismatch",
        ),
        ("typ_jwt", lambda c: [c.proof(header={"typ": "JWT"})], "invalid_dpop_proof"),
        ("no_jwk", lambda c: [c.proof(header={"jwk": None})], "invalid_dpop_proof"),
        ("two_proofs", lambda c: [c.proof(), c.proof()], "dpop_multiple_proofs"),
        ("no_proof", lambda c: [], "dpop_proof_missing"),
        ("not_a_jwt", lambda c: ["abc"], "invalid_dpop_proof"),
    ]


def _unsigned(client: Client) -> str:
    body = {"jti": "x", "htm": "GET", "htu": client.url(), "iat": int(time.time())}
    return jwt.encode(body, None, algorithm="none", headers={"typ": "dpop+jwt", "jwk": client.jwk})


def _private(client: Client) -> dict[str, Any]:
    return jwt.algorithms.ECAlgorithm.to_jwk(client.key, as_dict=True)


@pytest.mark.parametrize(("name", "make", "reason"), _hostile(), ids=[h[0] for h in _hostile()])
async def test_hostile_proof_is_refused_and_never_forwarded(
    dpop: Running, name: str, make: Any, reason: str
) -> None:
    client = Client(dpop)
    status, headers, body = await client.send(make(client))
    assert status == 401, body
    assert body.startswith(f"401 {reason}:".encode()), body
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP error=")
    error = "invalid_token" if reason == "dpop_key_mismatch" else "invalid_dpop_proof"
    assert f'error="{error}"' in challenge
    assert 'algs="ES256 PS256 EdDSA RS256"' in challenge
    assert dpop.upstream.seen == []
    sample = f'certbound_requests_total{{issuer="0",outcome="rejected",reason="{reason}"}}'
    assert await dpop.metric(sample) >= 1


async def test_replayed_proof_is_refused_and_never_forwarded(dpop: Running) -> None:
    client = Client(dpop)
    proof = client.proof()
    assert (await client.send([proof]))[0] == 200
    status, headers, body = await client.send([proof])
    assert status == 401
    assert body.startswith(b"401 dpop_replayed:")
    assert 'error="invalid_dpop_proof"' in headers["WWW-Authenticate"]
    assert len(dpop.upstream.seen) == 1


async def test_dpop_bound_token_sent_as_bearer_is_refused(dpop: Running) -> None:
    client = Client(dpop)
    for who in (None, "alice"):
        status, headers, body = await client.send([client.proof()], scheme="Bearer", who=who)
        assert status == 401
        assert body.startswith(b"401 dpop_token_as_bearer:")
        assert headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')
    assert dpop.upstream.seen == []


async def test_bearer_token_in_the_dpop_scheme_is_refused(dpop: Running) -> None:
    client = Client(dpop)
    for token in (dpop.issuer.mint(dpop.pki.alice), dpop.issuer.mint()):
        proof = client.proof(token=token)
        status, headers, body = await client.send([proof], token=token, who="alice")
        assert status == 401
        assert body.startswith(b"401 bearer_token_as_dpop:")
        assert headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')
    assert dpop.upstream.seen == []


async def test_token_bound_to_both_needs_the_certificate_too(dpop: Running) -> None:
    client = Client(dpop)
    cnf = {"jkt": thumbprint(client.jwk), "x5t#S256": _x5t(dpop)}
    token = dpop.issuer.mint(cnf=cnf)
    status, _, body = await client.send([client.proof(token=token)], token=token)
    assert status == 401
    assert body.startswith(b"401 no_client_cert:")
    status, _, body = await client.send([client.proof(token=token)], token=token, who="bob")
    assert body.startswith(b"401 thumbprint_mismatch:")
    status, _, body = await client.send([client.proof(token=token)], token=token, who="alice")
    assert status == 200, body
    assert len(dpop.upstream.seen) == 1


def _x5t(running: Running) -> str:
    from tests.support.stack import thumbprint as cert_thumbprint

    return cert_thumbprint(running.pki.alice)


async def test_external_base_url_is_what_htu_must_name(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    from proxy.settings import DPoPSettings

    settings = make_settings(pki, issuer, upstream)
    running = await start_proxy(
        tls=replace(settings.tls, client_cert="optional"),
        dpop=DPoPSettings(external_base_url="https://api.example.com/shop"),
    )
    client = Client(running)
    status, _, body = await client.send([client.proof()])
    assert body.startswith(b"401 dpop_wrong_url:")
    proof = client.proof(htu="https://API.example.com:443/shop/orders")
    status, _, body = await client.send([proof])
    assert status == 200, body


async def test_mtls_bound_token_is_unchanged_by_dpop_support(dpop: Running) -> None:
    token = dpop.issuer.mint(dpop.pki.alice)
    assert (await dpop.request(token=token))[0] == 200
    status, _, body = await dpop.request(token=token, who=None)
    assert status == 401
    assert body.startswith(b"401 no_client_cert:")


async def test_extra_claims_in_a_proof_are_allowed(dpop: Running) -> None:
    client = Client(dpop)
    proof = client.proof(aud="https://elsewhere.example", iss="client", nonce_hint="x")
    status, _, body = await client.send([proof])
    assert status == 200, body


async def test_expired_token_in_the_dpop_scheme_gets_a_dpop_challenge(dpop: Running) -> None:
    client = Client(dpop)
    token = dpop.issuer.mint(cnf={"jkt": thumbprint(client.jwk)}, exp=int(time.time()) - 3600)
    status, headers, body = await client.send([client.proof(token=token)], token=token)
    assert status == 401
    assert body.startswith(b"401 expired:")
    assert headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')
    assert dpop.upstream.seen == []


async def _on_one_connection(running: Running, requests: list[tuple[str, list[str]]]) -> list[Any]:
    """(status, body) of each (token, proofs) request, in order, on one kept-alive connection
    without a client certificate: the connection's memo and the known proof headers at work."""
    connector = aiohttp.TCPConnector(ssl=running.client_ssl(None), limit=1)
    answers = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for token, proofs in requests:
            headers = [("Authorization", f"DPoP {token}")] + [("DPoP", p) for p in proofs]
            async with session.get(running.url + "/orders", headers=headers) as resp:
                answers.append((resp.status, await resp.read()))
    return answers


@pytest.mark.parametrize(("name", "make", "reason"), _hostile(), ids=[h[0] for h in _hostile()])
async def test_hostile_proof_after_a_good_one_on_its_connection_is_refused_and_never_forwarded(
    dpop: Running, name: str, make: Any, reason: str
) -> None:
    """The second request takes the short paths (its token remembered by the connection, its
    proof header known): every check still applies."""
    client = Client(dpop)
    first, second = await _on_one_connection(
        dpop, [(client.token, [client.proof()]), (client.token, make(client))]
    )
    assert first[0] == 200, first
    assert second[0] == 401, second
    assert second[1].startswith(f"401 {reason}:".encode()), second
    assert len(dpop.upstream.seen) == 1


async def test_clients_taking_turns_on_one_connection_are_each_held_to_their_key(
    dpop: Running,
) -> None:
    one, two = Client(dpop), Client(dpop)
    answers = await _on_one_connection(
        dpop,
        [
            (one.token, [one.proof()]),
            (two.token, [two.proof()]),
            (one.token, [one.proof()]),
            (two.token, [one.proof(token=two.token)]),  # one's key, two's token
            (one.token, [two.proof(token=one.token)]),
        ],
    )
    assert [status for status, _ in answers] == [200, 200, 200, 401, 401]
    assert answers[3][1].startswith(b"401 dpop_key_mismatch:")
    assert answers[4][1].startswith(b"401 dpop_key_mismatch:")
    assert len(dpop.upstream.seen) == 3

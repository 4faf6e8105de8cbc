"""The hostile-input catalogue: every case goes through the running proxy over real mTLS and
asserts the exact status, the exact WWW-Authenticate error code, the reason in the body, and
that the upstream received nothing. Cases that are accepted by design are at the end and
assert what the upstream did receive."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.tools.pki import issue, make_ca
from tests.support.hostile import (
    Bait,
    ExtraCerts,
    assert_challenge,
    b64json,
    b64url,
    sign_raw,
    www,
)
from tests.support.stack import Running, thumbprint

pytestmark = pytest.mark.e2e

INVALID_TOKEN = "invalid_token"
INVALID_REQUEST = "invalid_request"


@dataclass(frozen=True)
class Env:
    r: Running
    bait: Bait
    certs: ExtraCerts

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return self.r.issuer.claims(self.r.pki.alice, **overrides)

    def k1(self) -> Any:
        return self.r.issuer.keys["k1"]

    def mint(self, **kw: Any) -> str:
        return self.r.issuer.mint(self.r.pki.alice, kid="k1", **kw)


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Env], dict[str, Any]]
    status: int
    error: str | None  # WWW-Authenticate error code; None = bare "Bearer"
    reason: str


def tok(make: Callable[[Env], str]) -> Callable[[Env], dict[str, Any]]:
    return lambda env: {"token": make(env)}


def auth(*values: str) -> Callable[[Env], dict[str, Any]]:
    return lambda env: {"headers": [("Authorization", v) for v in values]}


def hdr(env: Env, alg: str = "ES256", kid: object = "k1", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"alg": alg, "typ": "at+jwt", **extra}
    if kid is not None:
        out["kid"] = kid
    return out


def payload(env: Env, **overrides: Any) -> str:
    return json.dumps(env.claims(**overrides))


def rogue_ec() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def _rsa_public_pem(env: Env) -> bytes:
    key = env.r.issuer.keys["rsa1"]
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _self_signed_x5c() -> list[str]:
    return [base64.b64encode(make_ca("attacker").cert_der).decode("ascii")]


def payload_raw(env: Env, name: str, raw: str) -> str:
    """The usual claims as JSON text, with claim `name` set to the literal JSON `raw`."""
    claims = env.claims(**{name: "__RAW__"})
    return json.dumps(claims).replace('"__RAW__"', raw)


def _tamper(env: Env) -> str:
    header, _, sig = env.mint(sub="alice").split(".")
    forged = env.mint(sub="admin").split(".")[1]
    return f"{header}.{forged}.{sig}"


def _carol_tp(env: Env) -> str:
    return thumbprint(env.certs.carol)


def _carol(mangle: Callable[[str], str]) -> Callable[[Env], dict[str, Any]]:
    def make(env: Env) -> dict[str, Any]:
        tp = mangle(_carol_tp(env))
        assert tp != _carol_tp(env)
        token = env.r.issuer.mint(env.certs.carol, kid="k1", cnf={"x5t#S256": tp})
        return {"token": token, "who": "h_carol"}

    return make


NOW = int(time.time())

CASES: list[Case] = [
    # --- algorithm and signature -------------------------------------------------------------
    Case("alg-none", tok(lambda e: f"{b64json(hdr(e, 'none'))}.{b64json(e.claims())}."),
         401, INVALID_TOKEN, "disallowed_algorithm"),
    Case("alg-None-mixed-case", tok(lambda e: f"{b64json(hdr(e, 'None'))}.{b64json(e.claims())}."),
         401, INVALID_TOKEN, "disallowed_algorithm"),
    Case("alg-none-with-signature",
         tok(lambda e: f"{b64json(hdr(e, 'none'))}.{b64json(e.claims())}.{b64url(b'sig')}"),
         401, INVALID_TOKEN, "disallowed_algorithm"),
    Case("alg-missing", tok(lambda e: sign_raw({"kid": "k1"}, payload(e), e.k1())),
         401, INVALID_TOKEN, "disallowed_algorithm"),
    Case("alg-not-a-string", tok(lambda e: sign_raw(hdr(e, ["ES256"]), payload(e), e.k1())),  # type: ignore[arg-type]
         401, INVALID_TOKEN, "disallowed_algorithm"),
    Case("alg-ES512-not-listed", tok(lambda e: sign_raw(hdr(e, "ES512"), payload(e), e.k1())),
         401, INVALID_TOKEN, "disallowed_algorithm"),
    Case("hs256-with-rsa-public-key-as-secret",
         tok(lambda e: sign_raw(hdr(e, "HS256", "rsa1"), payload(e), _rsa_public_pem(e))),
         401, INVALID_TOKEN, "disallowed_algorithm"),
    Case("rs256-header-on-ec-kid",
         tok(lambda e: sign_raw(hdr(e, "RS256", "k1"), payload(e),
                                rsa.generate_private_key(public_exponent=65537, key_size=2048))),
         401, INVALID_TOKEN, "unknown_key"),
    Case("es256-header-on-rsa-kid",
         tok(lambda e: sign_raw(hdr(e, "ES256", "rsa1"), payload(e), rogue_ec())),
         401, INVALID_TOKEN, "unknown_key"),
    Case("tampered-payload", tok(_tamper), 401, INVALID_TOKEN, "invalid_signature"),
    Case("signature-stripped", tok(lambda e: e.mint().rsplit(".", 1)[0] + "."),
         401, INVALID_TOKEN, "invalid_signature"),
    Case("signed-by-rogue-key-with-real-kid",
         tok(lambda e: sign_raw(hdr(e), payload(e), rogue_ec())),
         401, INVALID_TOKEN, "invalid_signature"),
    Case("crit-header", tok(lambda e: sign_raw(hdr(e, crit=["exp2"], exp2=1), payload(e), e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("not-a-jwt", tok(lambda e: "abc"), 401, INVALID_TOKEN, "invalid_token"),
    Case("two-segments", tok(lambda e: ".".join(e.mint().split(".")[:2])),
         401, INVALID_TOKEN, "invalid_token"),
    Case("four-segments", tok(lambda e: e.mint() + ".AAAA"), 401, INVALID_TOKEN, "invalid_token"),
    Case("header-not-json", tok(lambda e: b64url(b"{nope") + "." + e.mint().split(".", 1)[1]),
         401, INVALID_TOKEN, "invalid_token"),
    Case("header-json-array", tok(lambda e: sign_raw(["ES256"], payload(e), e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("payload-not-json-signed", tok(lambda e: sign_raw(hdr(e), "{nope", e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("payload-json-array-signed", tok(lambda e: sign_raw(hdr(e), "[1,2]", e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("payload-invalid-utf8-signed", tok(lambda e: sign_raw(hdr(e), b"\xff\xfe{", e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("oversize-garbage-token-8000", tok(lambda e: "A" * 8000),
         401, INVALID_TOKEN, "invalid_token"),
    # --- key selection: kid, jku, x5u, jwk, x5c ----------------------------------------------
    Case("unknown-kid", tok(lambda e: sign_raw(hdr(e, kid="nope"), payload(e), rogue_ec())),
         401, INVALID_TOKEN, "unknown_key"),
    Case("kid-path-traversal",
         tok(lambda e: sign_raw(hdr(e, kid="../../../../etc/passwd"), payload(e), e.k1())),
         401, INVALID_TOKEN, "unknown_key"),
    Case("kid-is-a-url-to-bait",
         tok(lambda e: sign_raw(hdr(e, kid=e.bait.url + "/jwks.json"), payload(e), e.bait.rogue)),
         401, INVALID_TOKEN, "unknown_key"),
    Case("kid-with-nul-and-unicode",
         tok(lambda e: sign_raw(hdr(e, kid="k1\x00é"), payload(e), e.k1())),
         401, INVALID_TOKEN, "unknown_key"),
    Case("kid-4000-chars", tok(lambda e: sign_raw(hdr(e, kid="k" * 4000), payload(e), e.k1())),
         401, INVALID_TOKEN, "unknown_key"),
    Case("kid-not-a-string", tok(lambda e: sign_raw(hdr(e, kid=1), payload(e), e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("jku-to-bait-rogue-kid",
         tok(lambda e: sign_raw(hdr(e, kid="rogue", jku=e.bait.url + "/jwks.json"), payload(e),
                                e.bait.rogue)),
         401, INVALID_TOKEN, "unknown_key"),
    Case("jku-to-bait-real-kid",
         tok(lambda e: sign_raw(hdr(e, kid="k1", jku=e.bait.url + "/jwks.json"), payload(e),
                                e.bait.rogue)),
         401, INVALID_TOKEN, "invalid_signature"),
    Case("x5u-to-bait",
         tok(lambda e: sign_raw(hdr(e, kid="rogue", x5u=e.bait.url + "/cert.pem"), payload(e),
                                e.bait.rogue)),
         401, INVALID_TOKEN, "unknown_key"),
    Case("embedded-jwk-with-rogue-kid",
         tok(lambda e: sign_raw(hdr(e, kid="rogue", jwk=e.bait.jwk()), payload(e), e.bait.rogue)),
         401, INVALID_TOKEN, "unknown_key"),
    Case("embedded-jwk-without-kid",
         tok(lambda e: sign_raw(hdr(e, kid=None, jwk=e.bait.jwk()), payload(e), e.bait.rogue)),
         401, INVALID_TOKEN, "unknown_key"),
    Case("embedded-x5c-self-signed",
         tok(lambda e: sign_raw(hdr(e, kid="rogue", x5c=_self_signed_x5c()), payload(e),
                                e.bait.rogue)),
         401, INVALID_TOKEN, "unknown_key"),
    # --- registered claims -------------------------------------------------------------------
    Case("expired", tok(lambda e: e.mint(exp=NOW - 3600, iat=NOW - 7200, nbf=NOW - 7200)),
         401, INVALID_TOKEN, "expired"),
    Case("expired-just-past-leeway", tok(lambda e: e.mint(exp=int(time.time()) - 45)),
         401, INVALID_TOKEN, "expired"),
    Case("not-yet-valid-nbf", tok(lambda e: e.mint(nbf=NOW + 3600)),
         401, INVALID_TOKEN, "not_yet_valid"),
    Case("issued-in-the-future-iat", tok(lambda e: e.mint(iat=NOW + 3600)),
         401, INVALID_TOKEN, "not_yet_valid"),
    Case("wrong-iss", tok(lambda e: e.mint(iss="https://evil.example")),
         401, INVALID_TOKEN, "unknown_issuer"),
    Case("iss-with-trailing-slash", tok(lambda e: e.mint(iss=e.r.issuer.url + "/")),
         401, INVALID_TOKEN, "unknown_issuer"),
    Case("iss-missing", tok(lambda e: e.mint(iss=None)), 401, INVALID_TOKEN, "missing_claim"),
    Case("wrong-aud", tok(lambda e: e.mint(aud="https://other.example")),
         401, INVALID_TOKEN, "wrong_audience"),
    Case("aud-list-without-us", tok(lambda e: e.mint(aud=["a", "https://orders.example/"])),
         401, INVALID_TOKEN, "wrong_audience"),
    Case("aud-missing", tok(lambda e: e.mint(aud=None)), 401, INVALID_TOKEN, "missing_claim"),
    Case("exp-missing", tok(lambda e: e.mint(exp=None)), 401, INVALID_TOKEN, "missing_claim"),
    Case("exp-null", tok(lambda e: sign_raw(hdr(e), payload_raw(e, "exp", "null"), e.k1())),
         401, INVALID_TOKEN, "missing_claim"),
    Case("exp-a-string", tok(lambda e: e.mint(exp="tomorrow")),
         401, INVALID_TOKEN, "invalid_token"),
    Case("exp-infinite", tok(lambda e: sign_raw(hdr(e), payload_raw(e, "exp", "1e400"), e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("exp-nan", tok(lambda e: sign_raw(hdr(e), payload_raw(e, "exp", "NaN"), e.k1())),
         401, INVALID_TOKEN, "invalid_token"),
    Case("nbf-a-string", tok(lambda e: e.mint(nbf="now")), 401, INVALID_TOKEN, "invalid_token"),
    # --- cnf ---------------------------------------------------------------------------------
    Case("cnf-missing", tok(lambda e: e.r.issuer.mint(None, kid="k1")),
         401, INVALID_TOKEN, "missing_cnf"),
    Case("cnf-null", tok(lambda e: sign_raw(hdr(e), payload_raw(e, "cnf", "null"), e.k1())),
         401, INVALID_TOKEN, "missing_cnf"),
    Case("cnf-a-string", tok(lambda e: e.mint(cnf=thumbprint(e.r.pki.alice))),
         401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-an-array", tok(lambda e: e.mint(cnf=[{"x5t#S256": thumbprint(e.r.pki.alice)}])),
         401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-empty-object", tok(lambda e: e.mint(cnf={})), 401, INVALID_TOKEN, "missing_cnf"),
    Case("cnf-x5t-null", tok(lambda e: e.mint(cnf={"x5t#S256": None})),
         401, INVALID_TOKEN, "missing_cnf"),
    Case("cnf-x5t-a-number", tok(lambda e: e.mint(cnf={"x5t#S256": 1})),
         401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-an-array", tok(lambda e: e.mint(cnf={"x5t#S256": [thumbprint(e.r.pki.alice)]})),
         401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-sha1-x5t-only", tok(lambda e: e.mint(cnf={"x5t": b64url(hashlib.sha1(
        e.r.pki.alice.cert_der).digest())})), 401, INVALID_TOKEN, "missing_cnf"),
    # RFC 9449 §7.2: a DPoP-bound token sent as Bearer is a downgrade.
    Case("cnf-jkt-only", tok(lambda e: e.mint(cnf={"jkt": "A" * 43})),
         401, INVALID_TOKEN, "dpop_token_as_bearer"),
    Case("cnf-x5t-hex-digest", tok(lambda e: e.mint(cnf={"x5t#S256": hashlib.sha256(
        e.r.pki.alice.cert_der).hexdigest()})), 401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-with-padding", _carol(lambda t: t + "="), 401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-standard-alphabet", _carol(lambda t: t.replace("-", "+").replace("_", "/")),
         401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-different-case", _carol(str.swapcase), 401, INVALID_TOKEN, "thumbprint_mismatch"),
    Case("cnf-x5t-trailing-space", _carol(lambda t: t + " "), 401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-trailing-newline", _carol(lambda t: t + "\n"), 401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-leading-space", _carol(lambda t: " " + t), 401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-fullwidth-unicode", _carol(lambda t: t[:-1] + "\uff21"),
         401, INVALID_TOKEN, "invalid_cnf"),
    Case("cnf-x5t-over-pem-not-der", tok(lambda e: e.mint(cnf={"x5t#S256": b64url(
        hashlib.sha256(e.r.pki.alice.cert_pem).digest())})),
         401, INVALID_TOKEN, "thumbprint_mismatch"),
    Case("cnf-x5t-of-the-ca", tok(lambda e: e.mint(cnf={"x5t#S256": thumbprint(e.r.pki.ca)})),
         401, INVALID_TOKEN, "thumbprint_mismatch"),
    Case("cnf-x5t-of-the-intermediate",
         lambda e: {"who": "h_dave",
                    "token": e.mint(cnf={"x5t#S256": thumbprint(e.certs.intermediate)})},
         401, INVALID_TOKEN, "thumbprint_mismatch"),
    Case("replay-alice-token-with-bob-cert", lambda e: {"who": "bob", "token": e.mint()},
         401, INVALID_TOKEN, "thumbprint_mismatch"),
    Case("bound-to-other-ca-lookalike-cert",
         tok(lambda e: e.mint(cnf={"x5t#S256": thumbprint(e.r.pki.stranger)})),
         401, INVALID_TOKEN, "thumbprint_mismatch"),
    # --- the Authorization header and where the token travels ---------------------------------
    Case("no-authorization", lambda e: {}, 401, None, "no_token"),
    Case("proxy-authorization-only",
         lambda e: {"headers": [("Proxy-Authorization", "Bearer " + e.mint())]},
         401, None, "no_token"),
    Case("duplicate-authorization-headers",
         lambda e: {"headers": [("Authorization", "Bearer " + e.mint())] * 2},
         400, INVALID_REQUEST, "malformed_request"),
    Case("duplicate-authorization-one-garbage",
         lambda e: {"headers": [("Authorization", "Bearer " + e.mint()),
                                ("Authorization", "Bearer x")]},
         400, INVALID_REQUEST, "malformed_request"),
    Case("bearer-twice-comma",
         lambda e: {"headers": [("Authorization", f"Bearer {e.mint()}, Bearer {e.mint()}")]},
         400, INVALID_REQUEST, "malformed_request"),
    Case("bearer-bearer", lambda e: {"headers": [("Authorization", f"Bearer Bearer {e.mint()}")]},
         400, INVALID_REQUEST, "malformed_request"),
    Case("basic-scheme", auth("Basic YWxpY2U6cHc="), 400, INVALID_REQUEST, "malformed_request"),
    # A token that is not DPoP-bound, in the DPoP scheme (RFC 9449 §7.1).
    Case("dpop-scheme", lambda e: {"headers": [("Authorization", "DPoP " + e.mint())]},
         401, INVALID_TOKEN, "bearer_token_as_dpop"),
    Case("bearer-empty", auth("Bearer"), 400, INVALID_REQUEST, "malformed_request"),
    Case("bearer-tab-separator", lambda e: {"headers": [("Authorization", "Bearer\t" + e.mint())]},
         400, INVALID_REQUEST, "malformed_request"),
    Case("bearer-token-then-junk",
         lambda e: {"headers": [("Authorization", f"Bearer {e.mint()} x")]},
         400, INVALID_REQUEST, "malformed_request"),
    Case("bearer-quoted-token", lambda e: {"headers": [("Authorization", f'Bearer "{e.mint()}"')]},
         400, INVALID_REQUEST, "malformed_request"),
    Case("token-in-query", lambda e: {"path": f"/orders?access_token={e.mint()}"},
         400, INVALID_REQUEST, "malformed_request"),
    Case("token-in-query-and-header",
         lambda e: {"path": f"/orders?access_token={e.mint()}", "token": e.mint()},
         400, INVALID_REQUEST, "malformed_request"),
    Case("blank-access-token-in-query",
         lambda e: {"path": "/orders?x=1&access_token", "token": e.mint()},
         400, INVALID_REQUEST, "malformed_request"),
    # RFC 6750 §2.2 form tokens are never looked for: bodies stream unread. Without an
    # Authorization header the request simply has no token.
    Case("token-only-in-form-body",
         lambda e: {"method": "POST", "data": {"access_token": e.mint()}},
         401, None, "no_token"),
    # --- spoofing: identity headers without a good token never get anywhere ------------------
    Case("spoofed-identity-headers-no-token",
         lambda e: {"headers": [("X-Certbound-Subject", "root"), ("X-Certbound-Scope", "admin"),
                                ("X-Certbound-Thumbprint", thumbprint(e.r.pki.alice))]},
         401, None, "no_token"),
    Case("spoofed-client-cert-with-bad-token",
         lambda e: {"token": e.mint(cnf={"x5t#S256": thumbprint(e.r.pki.bob)}),
                    "headers": [("Client-Cert", ":" + b64url(e.r.pki.bob.cert_der) + ":")]},
         401, INVALID_TOKEN, "thumbprint_mismatch"),
    Case("connection-names-identity-headers-bad-token",
         lambda e: {"token": e.mint(aud="x"),
                    "headers": [("Connection", "X-Certbound-Subject, Authorization")]},
         401, INVALID_TOKEN, "wrong_audience"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_request_is_refused_and_never_forwarded(
    hostile: Running, bait: Bait, extra_certs: ExtraCerts, case: Case
) -> None:
    env = Env(hostile, bait, extra_certs)
    status, headers, body = await hostile.request(**case.make(env))
    assert status == case.status, body
    scheme = "DPoP" if case.reason in ("dpop_token_as_bearer", "bearer_token_as_dpop") else "Bearer"
    assert_challenge(www(headers), case.error, scheme)
    assert body.startswith(f"{case.status} {case.reason}:".encode()), body
    assert b"eyJ" not in body  # no token echoed back
    assert headers.get("Cache-Control") == "no-store"
    await asyncio.sleep(0.05)
    assert hostile.upstream.seen == []
    assert bait.hits == []  # jku / x5u / kid URLs are never fetched


def test_catalogue_is_big_enough() -> None:
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)


async def test_signed_exp_beyond_float_range_is_invalid_token_not_500(hostile: Running) -> None:
    """exp = 10**400: PyJWT accepts the integer, float() in claims_from_payload overflowed
    (fixed by /work/contract/patches/exp-overflow.diff)."""
    env = Env(hostile, Bait(), ExtraCerts(hostile.pki.alice, hostile.pki.ca, hostile.pki.alice))
    text = payload_raw(env, "exp", "9" * 400)
    token = sign_raw({"alg": "ES256", "kid": "k1"}, text, hostile.issuer.keys["k1"])
    status, headers, body = await hostile.request(token=token)
    assert status == 401, body
    assert_challenge(www(headers), INVALID_TOKEN)
    assert hostile.upstream.seen == []


# --- the RS256 -> HS256 confusion against an operator who listed HS256 -----------------------


@pytest.mark.parametrize("encoding", ["pem", "der", "jwk-json"])
async def test_hs256_signed_with_rsa_public_key_is_refused_even_when_hs256_is_allowed(
    hostile_hs: Running, encoding: str
) -> None:
    public = hostile_hs.issuer.keys["rsa1"].public_key()
    if encoding == "pem":
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif encoding == "der":
        secret = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        secret = jwt.algorithms.RSAAlgorithm.to_jwk(public).encode()
    claims = hostile_hs.issuer.claims(hostile_hs.pki.alice)
    token = sign_raw({"alg": "HS256", "kid": "rsa1"}, json.dumps(claims), secret)
    status, headers, body = await hostile_hs.request(token=token)
    assert status == 401, body
    assert_challenge(www(headers), INVALID_TOKEN)
    assert body.startswith(b"401 unknown_key:")
    assert hostile_hs.upstream.seen == []
    # The control: the same claims signed RS256 by the real key are accepted.
    good = hostile_hs.issuer.mint(hostile_hs.pki.alice, kid="rsa1")
    assert (await hostile_hs.request(token=good))[0] == 200


# --- the replay with a warm cache ------------------------------------------------------------


async def test_replay_after_the_owner_warmed_the_cache_is_still_refused(hostile: Running) -> None:
    token = hostile.issuer.mint(hostile.pki.alice, kid="k1")
    assert (await hostile.request(token=token))[0] == 200
    status, headers, body = await hostile.request(who="bob", token=token)
    assert status == 401
    assert_challenge(www(headers), INVALID_TOKEN)
    assert body.startswith(b"401 thumbprint_mismatch:")
    assert len(hostile.upstream.seen) == 1  # only alice's own request


# --- client certificates that never finish the handshake --------------------------------------


@pytest.mark.parametrize("who", [None, "stranger", "expired", "server_only"])
async def test_bad_client_certificate_never_reaches_http(hostile: Running, who: str | None) -> None:
    import ssl

    import aiohttp

    token = hostile.issuer.mint(hostile.pki.alice, kid="k1")
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await hostile.request(who=who, token=token)
    await asyncio.sleep(0.05)
    assert hostile.upstream.seen == []


async def test_leaf_under_intermediate_signing_with_ca_key_as_client_is_refused(
    hostile: Running,
) -> None:
    """A leaf 'signed' by a CA the proxy does not trust, chained with a real-looking name."""
    import ssl

    import aiohttp

    fake_ca = make_ca("test CA")  # same subject as the real CA, different key
    fake = issue(fake_ca, "alice")
    fake.write(hostile.pki.dir, "h_fake_alice")
    token = hostile.issuer.mint(fake, kid="k1")
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await hostile.request(who="h_fake_alice", token=token)
    assert hostile.upstream.seen == []


# --- accepted by design ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_auth_scheme_is_case_insensitive_and_forwarded(hostile: Running, scheme: str) -> None:
    """Decision: ACCEPTED. RFC 9110 §11.1: the auth-scheme is case-insensitive."""
    token = hostile.issuer.mint(hostile.pki.alice, kid="k1")
    status, _, body = await hostile.request(headers=[("Authorization", f"{scheme} {token}")])
    assert status == 200, body
    [seen] = hostile.upstream.seen
    assert seen.headers["x-certbound-thumbprint"] == [thumbprint(hostile.pki.alice)]


async def test_jku_and_x5u_are_ignored_for_a_genuine_token(hostile: Running, bait: Bait) -> None:
    """A genuine k1 token carrying jku/x5u/jwk headers: accepted on k1, the URLs never fetched."""
    token = hostile.issuer.mint(
        hostile.pki.alice,
        kid="k1",
        headers={"jku": bait.url + "/j", "x5u": bait.url + "/x", "jwk": bait.jwk()},
    )
    status, _, body = await hostile.request(token=token)
    assert status == 200, body
    await asyncio.sleep(0.1)
    assert bait.hits == []


async def test_leaf_under_intermediate_bound_to_its_own_thumbprint_is_accepted(
    hostile: Running, extra_certs: ExtraCerts
) -> None:
    token = hostile.issuer.mint(extra_certs.dave, kid="k1")
    status, _, body = await hostile.request(who="h_dave", token=token)
    assert status == 200, body
    [seen] = hostile.upstream.seen
    assert seen.headers["x-certbound-thumbprint"] == [thumbprint(extra_certs.dave)]


async def test_spoofed_identity_headers_with_good_token_are_replaced(hostile: Running) -> None:
    token = hostile.issuer.mint(hostile.pki.alice, kid="k1", sub="alice")
    spoof = [
        ("X-Certbound-Subject", "root"),
        ("X-CERTBOUND-CLIENT-ID", "admin-app"),
        ("X-Certbound-Thumbprint", thumbprint(hostile.pki.bob)),
        ("Client-Cert", ":" + b64url(hostile.pki.bob.cert_der) + ":"),
        ("Client-Cert-Chain", ":AAAA:"),
        ("X-Forwarded-Client-Cert", "Hash=abc"),
        ("X-Certbound-Admin", "true"),
        ("x-certbound-scope", "admin"),
        ("Connection", "X-Certbound-Subject, X-Certbound-Thumbprint, X-Certbound-Client-Id"),
    ]
    status, _, _ = await hostile.request(token=token, headers=spoof)
    assert status == 200
    seen = hostile.upstream.seen[0].headers
    assert seen["x-certbound-subject"] == ["alice"]
    assert seen["x-certbound-client-id"] == ["orders-app"]
    assert seen["x-certbound-thumbprint"] == [thumbprint(hostile.pki.alice)]
    assert seen["x-certbound-scope"] == ["orders:read"]
    for name in (
        "client-cert", "client-cert-chain", "x-forwarded-client-cert", "connection",
        "x-certbound-admin",
    ):  # fmt: skip
        assert name not in seen

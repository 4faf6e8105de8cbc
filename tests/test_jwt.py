"""tokens.jwt: which key, which rules, which reason. Pure functions, real keys and signatures."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.errors import AuthError, Reason
from proxy.settings import IssuerSettings
from proxy.tokens.jwks import KeySetError, parse_jwks
from proxy.tokens.jwt import TokenCache, check_header, read_header, verify_with_key

ISS, AUD = "https://issuer.example", "api"
SETTINGS = IssuerSettings(issuer=ISS, audience=(AUD,), algorithms=("RS256", "ES256"))
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk_of(private: Any, kid: str) -> jwt.PyJWK:
    algo = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(private, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    data = json.loads(algo.to_jwk(private.public_key()))
    data["kid"] = kid
    return jwt.PyJWK(data)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": "s", "exp": now + 60, "iat": now, "jti": "j"}
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def verify(token: str, key: jwt.PyJWK, settings: IssuerSettings = SETTINGS) -> Any:
    alg = check_header(read_header(token), settings)
    return verify_with_key(token, alg, key, settings, time.time())


def reason(token: str, key: jwt.PyJWK, settings: IssuerSettings = SETTINGS) -> Reason:
    with pytest.raises(AuthError) as info:
        verify(token, key, settings)
    return info.value.reason


def test_valid_rs256_and_es256_tokens_verify() -> None:
    for key, alg in ((RSA_KEY, "RS256"), (EC_KEY, "ES256")):
        token = jwt.encode(claims(scope="a b", client_id="c"), key, algorithm=alg)
        got = verify(token, jwk_of(key, "k"))
        assert (got.subject, got.scope, got.client_id) == ("s", "a b", "c")


def test_scp_list_and_azp_are_understood() -> None:
    token = jwt.encode(claims(scp=["a", "b"], azp="app"), EC_KEY, algorithm="ES256")
    got = verify(token, jwk_of(EC_KEY, "k"))
    assert (got.scope, got.client_id) == ("a b", "app")


def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    sig = hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()
    token = b".".join([header, payload, base64.urlsafe_b64encode(sig).rstrip(b"=")]).decode()
    assert reason(token, jwk_of(RSA_KEY, "k")) is Reason.DISALLOWED_ALGORITHM
    # Even when HS256 is allowed, an RSA key never verifies an HMAC token.
    hs = replace(SETTINGS, algorithms=("RS256", "HS256"))
    assert reason(token, jwk_of(RSA_KEY, "k"), hs) is Reason.UNKNOWN_KEY


def test_alg_outside_allow_list_is_refused_even_if_signature_is_good() -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="PS256")
    assert reason(token, jwk_of(RSA_KEY, "k")) is Reason.DISALLOWED_ALGORITHM


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # times relative to when the test runs, not to when it was collected
        ({"exp": -120}, Reason.EXPIRED),
        ({"nbf": 120}, Reason.NOT_YET_VALID),
        ({"iat": 3600}, Reason.NOT_YET_VALID),
        ({"iss": ISS + "/"}, Reason.WRONG_ISSUER),
        ({"aud": ["other", "another"]}, Reason.WRONG_AUDIENCE),
        ({"exp": None}, Reason.MISSING_CLAIM),
        ({"aud": None}, Reason.MISSING_CLAIM),
        ({"exp": "tomorrow"}, Reason.INVALID_TOKEN),
    ],
)
def test_claim_rules(overrides: dict[str, Any], expected: Reason) -> None:
    now = int(time.time())
    overrides = {
        k: now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v
        for k, v in overrides.items()
    }
    token = jwt.encode(claims(**overrides), EC_KEY, algorithm="ES256")
    assert reason(token, jwk_of(EC_KEY, "k")) is expected


def test_leeway_accepts_small_clock_skew() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 10), EC_KEY, algorithm="ES256")
    assert verify(token, jwk_of(EC_KEY, "k")).subject == "s"


def test_audience_list_containing_ours_is_accepted() -> None:
    token = jwt.encode(claims(aud=["other", AUD]), EC_KEY, algorithm="ES256")
    assert verify(token, jwk_of(EC_KEY, "k")).subject == "s"


def test_typ_at_jwt_enforced_when_configured() -> None:
    strict = replace(SETTINGS, require_typ_at_jwt=True)
    plain = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"typ": "JWT"})
    assert reason(plain, jwk_of(EC_KEY, "k"), strict) is Reason.WRONG_TYPE
    typed = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"typ": "at+jwt"})
    assert verify(typed, jwk_of(EC_KEY, "k"), strict).subject == "s"


def test_crit_header_is_refused() -> None:
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"crit": ["exp"]})
    assert reason(token, jwk_of(EC_KEY, "k")) is Reason.INVALID_TOKEN


@pytest.mark.parametrize("garbage", ["abc", "a.b", "a.b.c", "....", "eyJhbGciOiJub25lIn0"])
def test_garbage_is_invalid_token(garbage: str) -> None:
    with pytest.raises(AuthError) as info:
        read_header(garbage)
    assert info.value.reason is Reason.INVALID_TOKEN


def test_signature_by_other_key_of_same_type_is_invalid_signature() -> None:
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert reason(token, jwk_of(EC_KEY, "k")) is Reason.INVALID_SIGNATURE


def test_jwks_parsing_skips_private_and_encryption_keys() -> None:
    good = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key())) | {"kid": "a"}
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY)) | {"kid": "b"}
    enc = good | {"kid": "c", "use": "enc"}
    keys = parse_jwks({"keys": [good, private, enc, "junk"]}, ("ES256",))
    assert list(keys) == ["a"]
    with pytest.raises(KeySetError):
        parse_jwks({"keys": [private]}, ("ES256",))
    with pytest.raises(KeySetError):
        parse_jwks(["not", "an", "object"], ("ES256",))


def test_token_cache_is_bounded_and_expires_entries() -> None:
    cache = TokenCache(2)
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256")
    c = verify(token, jwk_of(EC_KEY, "k"))
    cache.put(b"1", c, c.expires_at)
    cache.put(b"2", c, c.expires_at)
    cache.put(b"3", c, c.expires_at)
    assert len(cache) == 2 and cache.get(b"1", time.time()) is None
    assert cache.get(b"3", c.expires_at + 1) is None  # dies with its token
    assert len(cache) == 1

"""The DPoP proof module alone: thumbprints, URL comparison, the replay cache, config keys."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config import validate
from proxy.errors import AuthError, Reason
from proxy.settings import DPoPSettings, Settings
from proxy.tokens.dpop import Nonces, jwk_thumbprint, normalize_url, verify_proof
from proxy.tokens.replay_cache import ReplayCache
from tests.support.dpop_proofs import make_proof, public_jwk

# RFC 7638 §3.1: the example RSA key and its thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def test_rsa_thumbprint_is_the_rfc_7638_example() -> None:
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("jwk", [{"kty": "oct", "k": "x"}, {"kty": "EC", "x": "a"}, {}])
def test_unusable_jwk_has_no_thumbprint(jwk: dict[str, str]) -> None:
    with pytest.raises(AuthError) as refused:
        jwk_thumbprint(jwk)
    assert refused.value.reason is Reason.INVALID_DPOP_PROOF


@pytest.mark.parametrize(
    ("htu", "expected"),
    [
        ("https://Example.COM/a/b", "https://example.com/a/b"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/a?", None),
        ("https://example.com/a?x=1", None),
        ("https://example.com/a#f", None),
        ("http://example.com/a", None),
        ("https://example.com:99999/a", None),
    ],
)
def test_htu_is_normalised_and_a_query_is_refused(htu: str, expected: str | None) -> None:
    assert normalize_url(htu) == expected


def test_replay_cache_refuses_a_jti_until_it_expires() -> None:
    cache = ReplayCache(10)
    assert cache.first_use("a", expires=100.0, now=0.0)
    assert not cache.first_use("a", expires=100.0, now=50.0)
    assert cache.first_use("a", expires=300.0, now=101.0)


def test_replay_cache_is_bounded_and_drops_expired_entries_first() -> None:
    cache = ReplayCache(3)
    for i in range(3):
        assert cache.first_use(str(i), expires=10.0 + i, now=0.0)
    assert cache.first_use("3", expires=20.0, now=0.0)
    assert len(cache) == 3
    assert cache.first_use("4", expires=30.0, now=12.5)  # 1 and 2 have expired
    assert len(cache) == 2


@pytest.mark.parametrize(
    ("dpop", "problem"),
    [
        (DPoPSettings(algorithms=("HS256",)), "dpop.algorithms: 'HS256' is not an asymmetric"),
        (DPoPSettings(algorithms=("none",)), "dpop.algorithms: 'none' is not an asymmetric"),
        (DPoPSettings(algorithms=()), "dpop.algorithms: at least one"),
        (DPoPSettings(max_age_seconds=0), "dpop.max_age_seconds"),
        (DPoPSettings(replay_cache_size=0), "dpop.replay_cache_size"),
        (DPoPSettings(external_base_url="http://x.example"), "dpop.external_base_url"),
        (DPoPSettings(external_base_url="https://x.example/?a"), "dpop.external_base_url"),
        (DPoPSettings(replay_cache="http://redis:6379"), "dpop.replay_cache: must be"),
        (DPoPSettings(replay_cache="redis://h:port/0"), "dpop.replay_cache: must be"),
        (DPoPSettings(replay_cache_timeout_seconds=0), "dpop.replay_cache_timeout_seconds"),
        (DPoPSettings(replay_cache_unavailable="ignore"), "dpop.replay_cache_unavailable"),
        (DPoPSettings(nonce=True, nonce_rotation_seconds=1), "dpop.nonce_rotation_seconds"),
        (DPoPSettings(nonce_secret_file="/etc/passwd"), "dpop.nonce_secret_file: set, but"),
        (DPoPSettings(nonce=True, nonce_secret_file="/nonexistent"), "dpop.nonce_secret_file"),
    ],
)
def test_dpop_settings_are_validated_with_their_key(dpop: DPoPSettings, problem: str) -> None:
    problems = validate(replace(Settings(), dpop=dpop))
    assert any(p.startswith(problem) for p in problems), problems


def test_tls_client_cert_is_required_or_optional() -> None:
    tls = replace(Settings().tls, client_cert="sometimes")
    problems = validate(replace(Settings(), tls=tls))
    assert any(p.startswith("tls.client_cert: required or optional") for p in problems)


def test_a_short_nonce_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "nonce.key"
    key.write_text("too-short\n")
    dpop = DPoPSettings(nonce=True, nonce_secret_file=str(key))
    problems = validate(replace(Settings(), dpop=dpop))
    assert any(p.startswith("dpop.nonce_secret_file: holds fewer than 32") for p in problems)


def test_a_redis_password_is_never_echoed_by_validation() -> None:
    dpop = DPoPSettings(replay_cache="redis://:hunter2-secret@h:notaport/0")
    problems = validate(replace(Settings(), dpop=dpop))
    assert problems and not any("hunter2" in p for p in problems)


def test_nonces_are_good_for_their_period_and_the_next() -> None:
    nonces = Nonces(b"k" * 32, 100)
    issued = nonces.current(now=1050.0)
    assert nonces.check(issued, now=1099.0) is None
    assert nonces.check(issued, now=1100.0) == nonces.current(now=1100.0)  # renewed on a 200
    for now in (1200.0, 999.0):  # two periods on, or one before it was issued
        with pytest.raises(AuthError) as refused:
            nonces.check(issued, now=now)
        assert refused.value.reason is Reason.DPOP_NONCE_INVALID
        assert refused.value.dpop_nonce == nonces.current(now=now)
    with pytest.raises(AuthError) as refused:
        nonces.check(None, now=1050.0)
    assert refused.value.reason is Reason.DPOP_NONCE_MISSING
    assert Nonces(b"x" * 32, 100).current(now=1050.0) != issued  # another key, other nonces


@pytest.mark.parametrize("host", ["api.example?x", "api.example#x"])
def test_a_request_url_without_a_normal_form_matches_no_htu(host: str) -> None:
    """Both sides without a normal form once compared equal: any htu with a query passed."""
    key = ec.generate_private_key(ec.SECP256R1())
    proof = make_proof(key, public_jwk(key), htm="GET", htu="https://evil.example/?q", token="t")
    with pytest.raises(AuthError) as refused:
        verify_proof(
            proof,
            method="GET",
            url=f"https://{host}/orders",
            access_token="t",
            algorithms=frozenset({"ES256"}),
            max_age=300,
            leeway=5,
        )
    assert refused.value.reason is Reason.DPOP_WRONG_URL

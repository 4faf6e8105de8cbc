"""tokens/signature.py against jwt.decode, the oracle: for every token that unverified.read
accepts, both accept with the same claims or both refuse with the same PyJWT error, across
algorithms (RSA and ECDSA, whose signatures signature.py checks with `cryptography` itself,
at every hash and curve size), keys, claim values and types (the registered-claim rules of
tokens/registered_claims.py: JSON null, booleans, numeric strings, huge integers), malformed,
foreign-length and DER signatures, non-canonical segments, `alg` confusion, `crit`, `b64`,
padding and whitespace, and keys judged again from signature.py's prepared-key memo.
Hypothesis writes the tokens."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.errors import AuthError, Reason
from proxy.settings import IssuerSettings
from proxy.tokens import signature, unverified
from proxy.tokens.jwt import verify_with_key
from tests.support.jws_mutations import mutations

ISS = "https://issuer.example"
AUD = "https://orders.example"
LEEWAY = 30
OPTIONS: dict[str, Any] = {"require": ["exp", "iss", "aud"], "verify_iat": True}
NOW = int(time.time())

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())
_EC384 = ec.generate_private_key(ec.SECP384R1())
_EC521 = ec.generate_private_key(ec.SECP521R1())
_ED = ed25519.Ed25519PrivateKey.generate()
_OTHER_EC = ec.generate_private_key(ec.SECP256R1())
_SECRET = b"s" * 32
# alg -> (signing key, verification key as the key set holds it)
KEYS: dict[str, tuple[Any, Any]] = {
    "RS256": (_RSA, _RSA.public_key()),
    "RS512": (_RSA, _RSA.public_key()),
    "PS256": (_RSA, _RSA.public_key()),
    "ES256": (_EC, _EC.public_key()),
    "ES384": (_EC384, _EC384.public_key()),
    "ES512": (_EC521, _EC521.public_key()),
    "EdDSA": (_ED, _ED.public_key()),
    "HS256": (_SECRET, _SECRET),
}
# Away from every boundary (0 and the 30 s leeway), so both judges see the same clock.
OFFSETS = st.sampled_from([-7200, -100, -45, -15, 15, 45, 100, 7200])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NULL = "<JSON null>"  # a claim present with the value null, unlike one left out (None)


def claim(good: Any, odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a good value; sometimes an odd one, null, or none at all (None: left out)."""
    return st.integers(0, 15).flatmap(
        lambda n: (
            st.none() if n == 0 else odd if n == 1 else st.just(NULL) if n == 2 else st.just(good)
        )
    )


TIME = st.one_of(
    OFFSETS.map(lambda offset: NOW + offset),
    OFFSETS.map(lambda offset: float(NOW + offset) + 0.5),
    OFFSETS.map(lambda offset: str(NOW + offset)),  # int() reads a numeric string
    st.sampled_from(
        ["soon", "1.5", True, False, [NOW], {"t": 1}, float("nan"), float("inf"), 10**30, -(10**30)]
    ),
)
PAST, FUTURE = NOW - 100, NOW + 600
HEADER_EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["at+jwt", "JWT", 7]),
        "crit": st.sampled_from([["b64"], ["exp"], [], "b64", [1]]),
        "b64": st.sampled_from([True, False, "no"]),
        "kid": st.sampled_from(["k1", ""]),
        "jku": st.just("https://evil.example/jwks"),
    },
)


@st.composite
def tokens(draw: st.DrawFn) -> tuple[str, str]:
    """(token, the alg the verifier's key is for)."""
    key_alg = draw(st.sampled_from(sorted(KEYS)))
    # alg confusion: the header may name another algorithm than the key set's key is for.
    header_alg = draw(st.sampled_from([key_alg] * 4 + [*sorted(KEYS), "none"]))
    extras = draw(HEADER_EXTRAS) if draw(st.integers(0, 2)) == 0 else {}
    header = {"alg": header_alg, "typ": "at+jwt", **extras}
    payload = {
        name: value
        for name, value in {
            "iss": draw(claim(ISS, st.sampled_from([ISS + "/", 5, [ISS], "", True]))),
            "aud": draw(
                claim(
                    AUD,
                    st.sampled_from(
                        [[AUD], ["x", AUD], "x", [], [1], 7, "", [AUD, None], {AUD: 1}, [[AUD]]]
                    ),
                )
            ),
            "exp": draw(claim(FUTURE, TIME)),
            "nbf": draw(claim(PAST, TIME)),
            "iat": draw(claim(PAST, TIME)),
            "sub": draw(claim("alice", st.sampled_from([5, "", ["alice"], False]))),
            "jti": draw(claim("j-1", st.sampled_from([5, ["j"], 1.5]))),
            "scope": draw(claim("a b", st.text(max_size=8))),
        }.items()
        if value is not None
    }
    payload = {name: None if value == NULL else value for name, value in payload.items()}
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    signing_input = f"{head}.{body}".encode()
    signer_alg = key_alg if header_alg in ("none", "HS256") else header_alg
    signing_key = KEYS[signer_alg][0]
    if draw(st.integers(0, 5)) == 0 and signer_alg == "ES256":
        signing_key = _OTHER_EC  # a genuine signature by a key the issuer does not have
    algorithm = jwt.PyJWS().get_algorithm_by_name(signer_alg)
    raw_signature = algorithm.sign(signing_input, algorithm.prepare_key(signing_key))
    forgery = draw(st.integers(0, 9))
    if forgery == 0:
        # Bytes of a length the key's check must refuse, or take as r || s of the curve.
        raw_signature = draw(st.sampled_from([0, 1, 32, 63, 64, 65, 96, 132, 255, 256, 257]))
        raw_signature = bytes(raw_signature) if raw_signature % 2 else b"\x01" * raw_signature
    elif forgery == 1 and signer_alg.startswith("ES"):
        # The DER encoding cryptography signs in, not the r || s JWS requires (RFC 7518 §3.4).
        size = len(raw_signature) // 2
        raw_signature = encode_dss_signature(
            int.from_bytes(raw_signature[:size], "big"), int.from_bytes(raw_signature[size:], "big")
        )
    elif forgery == 2 and signer_alg.startswith("ES"):
        size = len(raw_signature) // 2  # r = 0, or s = 0
        raw_signature = bytes(size) + raw_signature[size:]
    sig = b64(raw_signature)
    token = f"{head}.{body}.{sig}"
    return draw(mutations(token)), key_alg


def by_oracle(token: str, alg: str, key: Any) -> tuple[str, Any]:
    try:
        payload = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=(AUD,),
            issuer=ISS,
            leeway=LEEWAY,
            options=OPTIONS,  # type: ignore[arg-type]
        )
    except Exception as exc:  # the outcome is the type of what was raised
        return "refused", type(exc)
    return "accepted", payload


def by_fast_path(token: str, alg: str, key: Any) -> tuple[str, Any]:
    header, payload = unverified.read(token)
    try:
        decoded = signature.decode(
            token,
            header,
            payload,
            key,
            alg,
            audience=(AUD,),
            issuer=ISS,
            leeway=LEEWAY,
            options=OPTIONS,
        )
    except Exception as exc:  # the outcome is the type of what was raised
        return "refused", type(exc)
    return "accepted", decoded


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tokens(), as_jwk=st.booleans())
def test_the_fast_path_judges_every_token_as_jwt_decode_does(
    case: tuple[str, str], as_jwk: bool
) -> None:
    """as_jwk: the key as a PyJWK bound to its algorithm, as tokens/dpop.py holds a proof's."""
    token, key_alg = case
    try:
        header = unverified.read(token, payload=False)[0]
    except unverified.Unreadable:
        # Not a compact JWS of canonical form for unverified.read: refused before any key.
        event("unreadable")
        assert _refused_by_verifier(token, key_alg) is Reason.INVALID_TOKEN
        return
    alg = header.get("alg")
    if not isinstance(alg, str):
        return  # check_header refuses it before either judge
    key = jwt.PyJWK(_jwk(key_alg), algorithm=key_alg) if as_jwk else KEYS[key_alg][1]
    try:
        unverified.read(token)
    except unverified.Unreadable:
        assert _refused_by_verifier(token, key_alg) is Reason.INVALID_TOKEN
        return
    outcome = by_oracle(token, alg, key)
    event(outcome[0] if outcome[0] == "accepted" else outcome[1].__name__)
    assert by_fast_path(token, alg, key) == outcome


def _refused_by_verifier(token: str, key_alg: str) -> Reason:
    issuer = IssuerSettings(
        name="0", issuer=ISS, audience=(AUD,), algorithms=tuple(KEYS), leeway_seconds=LEEWAY
    )
    jwk = jwt.PyJWK.from_dict(_jwk(key_alg))
    with pytest.raises(AuthError) as refused:
        verify_with_key(token, key_alg, jwk, issuer, time.time())
    return refused.value.reason


def _jwk(alg: str) -> dict[str, Any]:
    algorithm = jwt.PyJWS().get_algorithm_by_name(alg)
    document: dict[str, Any] = json.loads(algorithm.to_jwk(KEYS[alg][1]))
    document["alg"] = alg
    return document


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_a_good_token_of_each_algorithm_is_accepted_by_both(alg: str) -> None:
    claims = {"iss": ISS, "aud": AUD, "exp": NOW + 600, "iat": NOW, "sub": "alice"}
    token = jwt.encode(claims, KEYS[alg][0], algorithm=alg, headers={"kid": "k1"})
    key = KEYS[alg][1]
    assert by_fast_path(token, alg, key) == by_oracle(token, alg, key) == ("accepted", claims)


def test_a_non_canonical_last_character_is_refused_by_both() -> None:
    claims = {"iss": ISS, "aud": AUD, "exp": NOW + 600}
    token = jwt.encode(claims, _EC, algorithm="ES256")
    head, body, sig = token.split(".")
    assert len(sig) % 4 == 2  # 64 bytes: the last character carries 4 unused bits
    tampered = f"{head}.{body}.{sig[:-1]}{signature._ALPHABET[signature._VALUE[sig[-1]] ^ 1]}"
    key = _EC.public_key()
    assert by_oracle(tampered, "ES256", key) == ("refused", jwt.DecodeError)
    assert by_fast_path(tampered, "ES256", key) == ("refused", jwt.DecodeError)


@pytest.mark.parametrize("key_alg", sorted(KEYS))
@pytest.mark.parametrize("header_alg", sorted(KEYS))
def test_a_key_judged_again_from_the_prepared_key_memo_is_judged_as_jwt_decode_does(
    key_alg: str, header_alg: str
) -> None:
    """Every pairing of a key set's key with a header's algorithm (alg confusion included),
    judged twice: the first time prepares the key (or refuses it), the second comes from
    signature.py's memo of what PyJWT decided, with a fresh key object a third time."""
    claims = {"iss": ISS, "aud": AUD, "exp": NOW + 600, "iat": NOW, "sub": "alice"}
    signer = header_alg if header_alg != "HS256" else "HS256"
    token = jwt.encode(claims, KEYS[signer][0], algorithm=header_alg)
    key = KEYS[key_alg][1]
    outcome = by_oracle(token, header_alg, key)
    assert by_fast_path(token, header_alg, key) == outcome
    assert by_fast_path(token, header_alg, key) == outcome
    fresh = jwt.PyJWK(_jwk(key_alg), algorithm=key_alg).key if key_alg != "HS256" else b"s" * 32
    assert by_fast_path(token, header_alg, fresh) == by_oracle(token, header_alg, fresh)

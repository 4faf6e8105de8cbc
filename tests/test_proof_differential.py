"""tokens/dpop.py's path for a proof whose header it knows against the path that reads the
proof whole, and against jwt.decode, the oracle: for every proof, verify_proof gives the same
outcome (the same Proof, or the same refusal) whether its header was seen before or not, and
where the header passed its checks, the known-header path's signature and claim rules accept
exactly what jwt.decode accepts, with the same claims. Across algorithms and curves, alg
confusion, crit, b64, claim types, malformed and non-canonical segments, padding, whitespace,
truncated, foreign and random signatures. Hypothesis writes the proofs."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.errors import AuthError
from proxy.tokens import dpop, unverified
from tests.support.jws_mutations import mutations

NOW = int(time.time())
URL = "https://api.example/orders"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
ATH = dpop.b64url_sha256(TOKEN.encode())
ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA"})

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# alg -> the client's signing key (its public half goes into the proof's jwk)
KEYS: dict[str, Any] = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
    "RS256": _RSA,
    "PS256": _RSA,
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
}
_OTHER_P256 = ec.generate_private_key(ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(alg: str) -> dict[str, Any]:
    algorithm = jwt.PyJWS().get_algorithm_by_name(alg)
    document: dict[str, Any] = json.loads(algorithm.to_jwk(KEYS[alg].public_key()))
    return document


def odd(good: Any, others: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly a good value; sometimes an odd one, or none at all (None: left out)."""
    return st.integers(0, 23).flatmap(
        lambda n: st.none() if n == 0 else st.sampled_from(others) if n == 1 else st.just(good)
    )


HEADER_EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "crit": st.sampled_from([["b64"], ["exp"], [], "b64"]),
        "b64": st.sampled_from([True, False]),
        "kid": st.sampled_from(["k1", 7]),
        "x-client": st.just("v1"),
    },
)


@st.composite
def proofs(draw: st.DrawFn) -> str:
    key_alg = draw(st.sampled_from(sorted(KEYS)))
    # alg confusion: the header may name another algorithm than its jwk's key is for.
    header_alg = draw(st.sampled_from([key_alg] * 12 + [*sorted(KEYS), "HS256", "none"]))
    extras = draw(HEADER_EXTRAS) if draw(st.integers(0, 5)) == 0 else {}
    header = {"typ": draw(odd("dpop+jwt", ["JWT", "at+jwt"])), "alg": header_alg}
    header["jwk"] = jwk_of(key_alg)
    header = {k: v for k, v in {**header, **extras}.items() if v is not None}
    payload = {
        name: value
        for name, value in {
            "jti": draw(odd("j-1", [7, ["j"], ""])),
            "sub": draw(st.sampled_from([None, None, "alice", 5, ["a"]])),
            "htm": draw(odd("GET", ["POST", "get"])),
            "htu": draw(odd(URL, [URL + "?q=1", "https://API.example:443/orders", 5])),
            "iat": draw(odd(NOW, [NOW - 3600, NOW + 3600, "now", True, float(NOW)])),
            "ath": draw(odd(ATH, [ATH[:-1] + "A", 5])),
            "nonce": draw(st.sampled_from([None, "n-1", 5])),
        }.items()
        if value is not None
    }
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    signing_input = f"{head}.{body}".encode()
    signer_alg = header_alg if header_alg in KEYS else key_alg
    signing_key = KEYS[signer_alg]
    if signer_alg == "ES256" and draw(st.integers(0, 5)) == 0:
        signing_key = _OTHER_P256  # a genuine signature by a key other than the jwk's
    algorithm = jwt.PyJWS().get_algorithm_by_name(signer_alg)
    raw = algorithm.sign(signing_input, algorithm.prepare_key(signing_key))
    kind = draw(st.sampled_from(["good"] * 9 + ["random", "short", "long"]))
    if kind == "random":
        raw = draw(st.binary(min_size=len(raw), max_size=len(raw)))
    elif kind == "short":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "long":
        raw += b"\x00"
    proof = f"{head}.{body}.{b64(raw)}"
    return str(draw(mutations(proof))) if draw(st.integers(0, 2)) == 0 else proof


def outcome(proof: str) -> tuple[Any, ...]:
    try:
        checked = dpop.verify_proof(
            proof,
            method="GET",
            url=URL,
            access_token=TOKEN,
            algorithms=ALGORITHMS,
            max_age=300,
            leeway=5,
            now=NOW,
        )
    except AuthError as refusal:
        return "refused", refusal.reason, refusal.description
    return "accepted", checked


def by_oracle(proof: str, header: ProofHeaderFacts) -> tuple[str, Any]:
    key = jwt.PyJWK(header.jwk, algorithm=header.alg)
    try:
        payload = jwt.decode(
            proof,
            key=key,
            algorithms=[header.alg],
            options=dpop.PROOF_DECODE_OPTIONS,
        )
    except Exception as exc:  # the outcome is that it raised
        return "refused", type(exc).__name__
    return "accepted", payload


class ProofHeaderFacts:
    def __init__(self, proof: str) -> None:
        header, _ = unverified.read(proof, payload=False)
        self.alg: str = header["alg"]
        self.jwk: dict[str, Any] = header["jwk"]


def by_known_header(proof: str, known: dpop.ProofHeader) -> tuple[str, Any]:
    try:
        head, payload = unverified.read_payload(proof)
        claims = dpop._verified_claims(proof, len(head), payload, known)
    except (AuthError, unverified.Unreadable):
        return "refused", None
    return "accepted", claims


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proof=proofs())
def test_a_known_header_changes_no_outcome_and_jwt_decode_agrees(proof: str) -> None:
    dpop._HEADERS.clear()
    dpop._KEYS.clear()
    first = outcome(proof)  # read whole: signature.decode, itself held to jwt.decode
    known = dpop._HEADERS.get(proof.partition(".")[0])
    again = outcome(proof)  # with the header known, when its checks passed
    assert again == first
    event(first[0] if first[0] == "accepted" else first[2])
    if known is None:
        event("header not kept")
        return
    event("header kept")
    oracle = by_oracle(proof, ProofHeaderFacts(proof))
    fast = by_known_header(proof, known)
    assert fast[0] == oracle[0], (fast, oracle)
    if fast[0] == "accepted":
        assert fast[1] == oracle[1]


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_a_good_proof_of_each_algorithm_is_accepted_with_its_header_known(alg: str) -> None:
    dpop._HEADERS.clear()
    header = {"typ": "dpop+jwt", "jwk": jwk_of(alg)}
    for _ in range(2):  # the second proof takes the known header's path
        claims = {"jti": os.urandom(8).hex(), "htm": "GET", "htu": URL, "iat": NOW, "ath": ATH}
        proof = jwt.encode(claims, KEYS[alg], algorithm=alg, headers=header)
        assert outcome(proof)[0] == "accepted"
    assert len(dpop._HEADERS) == 1


def test_a_known_header_is_still_held_to_the_allow_list() -> None:
    dpop._HEADERS.clear()
    header = {"typ": "dpop+jwt", "jwk": jwk_of("ES256")}
    claims = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": NOW, "ath": ATH}
    proof = jwt.encode(claims, KEYS["ES256"], algorithm="ES256", headers=header)
    assert outcome(proof)[0] == "accepted"
    with pytest.raises(AuthError) as refused:
        dpop.verify_proof(
            proof,
            method="GET",
            url=URL,
            access_token=TOKEN,
            algorithms=frozenset({"EdDSA"}),
            max_age=300,
            leeway=5,
            now=NOW,
        )
    assert refused.value.reason.value == "dpop_disallowed_algorithm"

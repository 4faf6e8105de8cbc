"""The unverified read of a compact JWS (proxy/tokens/unverified.py): it must read what PyJWT
reads for every token PyJWT accepts, and refuse what is not one spelling of a JWS."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.tokens import unverified

KEY = b"k" * 32  # HS256 here only to make many tokens fast; the read never looks at alg

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


# PyJWT checks the types of its registered claims when it makes or decodes a token (an `iss` of
# null is refused at encode), so those names would only test PyJWT; the read ignores names.
REGISTERED = {"iss", "sub", "aud", "exp", "nbf", "iat", "jti"}
claim_names = st.text(max_size=12).filter(lambda name: name not in REGISTERED)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(
    claims=st.dictionaries(claim_names, json_values, max_size=6),
    extra=st.dictionaries(st.sampled_from(["kid", "typ", "x5t", "cty"]), st.text(max_size=20)),
)
def test_reads_what_pyjwt_reads(claims: dict[str, Any], extra: dict[str, str]) -> None:
    token = jwt.encode(claims, KEY, algorithm="HS256", headers=extra)
    header, payload = unverified.read(token)
    assert header == jwt.get_unverified_header(token)
    assert payload == jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_aud": False})


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


GOOD_HEAD, GOOD_BODY = _b64({"alg": "ES256"}), _b64({"iss": "x"})


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        f"{GOOD_HEAD}.{GOOD_BODY}",  # two parts
        f"{GOOD_HEAD}.{GOOD_BODY}.sig.more",
        f"{GOOD_HEAD}=.{GOOD_BODY}.sig",  # padding: another spelling of the same bytes
        f"{GOOD_HEAD}.{GOOD_BODY}+/.sig",  # the standard alphabet
        f"{_b64([1, 2])}.{GOOD_BODY}.sig",  # header not an object
        f"{GOOD_HEAD}.{_b64('text')}.sig",  # payload not an object
        f"{GOOD_HEAD}A.{GOOD_BODY}.sig",  # a length no byte string encodes to
        f"{_b64({'alg': 'ES256', 'kid': 7})}.{GOOD_BODY}.sig",  # kid not a string
        f"{base64.urlsafe_b64encode(b'{not json').rstrip(b'=').decode()}.{GOOD_BODY}.sig",
        f"{GOOD_HEAD}.{GOOD_BODY}.sig\n",
    ],
)
def test_refuses_what_is_not_one_spelling_of_a_jws(token: str) -> None:
    with pytest.raises(unverified.Unreadable):
        unverified.read(token)


def test_payload_is_not_read_when_not_asked_for() -> None:
    header, payload = unverified.read(f"{GOOD_HEAD}.{_b64('not an object')}.sig", payload=False)
    assert header == {"alg": "ES256"} and payload == {}


# The regular expression and json.loads that unverified.read used before its C-speed checks:
# the oracle for what it accepts and what it reads.
_ORACLE_FORM = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _oracle(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if _ORACLE_FORM.fullmatch(token) is None:
        return None
    found = []
    for part in token.split(".")[:2]:
        if len(part) % 4 == 1:
            return None
        try:
            value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except (binascii.Error, ValueError, RecursionError):
            return None
        if not isinstance(value, dict):
            return None
        found.append(value)
    kid = found[0].get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    return found[0], found[1]


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_JSONISH = st.one_of(
    st.dictionaries(st.sampled_from(["alg", "kid", "iss", "x"]), st.integers() | st.text())
    .map(json.dumps)
    .map(str.encode),
    st.sampled_from([b'{"a":1} ', b' {"a":1}', b'{"a":1}x', b"[1]", b"{}", b'{"a":"\xff"}']),
    st.sampled_from(["utf-16", "utf-32", "utf-8-sig"]).map(lambda c: '{"a":1}'.encode(c)),
    st.binary(max_size=12),
)


@settings(max_examples=500, deadline=None)
@given(
    header=_JSONISH,
    payload=_JSONISH,
    signature=st.binary(max_size=8).map(_encode),
    noise=st.sampled_from(["", "=", " ", "+", "/", ".", "\n", "é", "\x00"]),
    where=st.integers(0, 400),
)
def test_read_accepts_and_reads_exactly_what_the_regex_and_json_loads_did(
    header: bytes, payload: bytes, signature: str, noise: str, where: int
) -> None:
    token = f"{_encode(header)}.{_encode(payload)}.{signature}"
    at = min(where, len(token))
    token = token[:at] + noise + token[at:]
    expected = _oracle(token)
    try:
        got: tuple[dict[str, Any], dict[str, Any]] | None = unverified.read(token)
    except unverified.Unreadable:
        got = None
    assert got == expected


def test_a_header_read_again_is_read_from_the_memo_as_it_was_the_first_time() -> None:
    token = f"{_b64({'alg': 'ES256', 'kid': 'memo-1'})}.{_b64({'iss': 'x'})}.c2ln"
    first, again = unverified.read(token)[0], unverified.read(token)[0]
    assert first == again == {"alg": "ES256", "kid": "memo-1"}


def test_a_header_refused_once_is_refused_every_time() -> None:
    """Only headers that passed are remembered: a kid that is no string stays unreadable."""
    token = f"{_b64({'alg': 'ES256', 'kid': 7})}.{_b64({'iss': 'x'})}.c2ln"
    for _ in range(2):
        with pytest.raises(unverified.Unreadable):
            unverified.read(token)


def test_the_header_memo_stays_bounded_under_a_flood_of_headers() -> None:
    for n in range(unverified.HEADERS_KEPT * 3):
        unverified.read(f"{_b64({'alg': 'ES256', 'kid': f'flood-{n}'})}.{_b64({})}.c2ln")
    assert len(unverified._headers) <= unverified.HEADERS_KEPT
    long_kid = "k" * unverified.HEADER_KEPT_BYTES
    unverified.read(f"{_b64({'alg': 'ES256', 'kid': long_kid})}.{_b64({})}.c2ln")
    assert all(len(head) <= unverified.HEADER_KEPT_BYTES for head in unverified._headers)


def test_a_header_holding_a_private_key_is_read_but_never_kept() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ", "d": "c2VjcmV0"}
    head = _b64({"alg": "ES256", "typ": "dpop+jwt", "jwk": jwk})
    assert unverified.read(f"{head}.{_b64({})}.c2ln")[0]["jwk"] == jwk
    assert head.encode() not in unverified._headers

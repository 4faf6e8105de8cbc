"""The unverified read of a compact JWS (proxy/tokens/unverified.py): it must read what PyJWT
reads for every token PyJWT accepts, and refuse what is not one spelling of a JWS."""

from __future__ import annotations

import base64
import json
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

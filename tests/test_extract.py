"""tokens.extract: RFC 6750 §2.1 header parsing, pure."""

from __future__ import annotations

import pytest

from proxy.errors import AuthError, Reason
from proxy.tokens.extract import MAX_TOKEN_LENGTH, extract_bearer


def reason_of(values: list[str], query: tuple[str, ...] = ()) -> Reason:
    with pytest.raises(AuthError) as info:
        extract_bearer(values, query)
    return info.value.reason


def test_bearer_token_is_returned() -> None:
    assert extract_bearer(["Bearer abc.DEF-_~+/="], ()) == "abc.DEF-_~+/="


def test_scheme_is_case_insensitive() -> None:
    assert extract_bearer(["bearer a.b.c"], ()) == "a.b.c"
    assert extract_bearer(["BEARER a.b.c"], ()) == "a.b.c"


def test_no_header_is_no_token() -> None:
    assert reason_of([]) is Reason.NO_TOKEN


@pytest.mark.parametrize(
    "value",
    [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer Bearer a",
        "Basic YTpi",
        "Token abc",
        "Bearer a\x00b",
        "Bearer a,b",
        "Bearer é",
        "Bearer " + "a" * (MAX_TOKEN_LENGTH + 1),
        "Bearer\ta.b.c",
        "",
    ],
)
def test_malformed_header_is_invalid_request(value: str) -> None:
    assert reason_of([value]) is Reason.MALFORMED_REQUEST


def test_two_headers_are_invalid_request() -> None:
    assert reason_of(["Bearer a", "Bearer a"]) is Reason.MALFORMED_REQUEST


def test_query_token_is_invalid_request_even_with_a_header() -> None:
    assert reason_of(["Bearer a"], ("access_token",)) is Reason.MALFORMED_REQUEST
    assert reason_of([], ("access_token",)) is Reason.MALFORMED_REQUEST


def test_dpop_scheme_gives_the_token_and_says_it_is_dpop() -> None:
    from proxy.tokens.extract import extract_credentials

    assert extract_credentials(["DPoP a.b.c"], ()) == ("a.b.c", True)
    assert extract_credentials(["dpop a.b.c"], ()) == ("a.b.c", True)
    assert extract_credentials(["Bearer a.b.c"], ()) == ("a.b.c", False)
    with pytest.raises(AuthError):
        extract_bearer(["DPoP a.b.c"], ())

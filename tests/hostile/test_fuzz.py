"""Property-based fuzzing of the Authorization header and JWT parsing. The pure functions take
the bulk (fast); a smaller set of generated examples goes through the running proxy.

Properties: no input raises anything but AuthError (a 5xx), and nothing is accepted unless it
is, byte for byte after base64url decoding, the genuine token."""

from __future__ import annotations

import base64
import json
import string
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import REFUSALS, AuthError, Reason
from proxy.settings import IssuerSettings
from proxy.tokens.extract import MAX_TOKEN_LENGTH, extract_bearer, extract_credentials
from proxy.tokens.jwt import check_header, read_header, verify_with_key
from proxy.tokens.unverified import is_compact
from tests.support.rawhttp import raw_exchange
from tests.support.stack import Running

pytestmark = pytest.mark.e2e

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
B64TOKEN_CHARS = set(string.ascii_letters + string.digits + "-._~+/=")

KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = jwt.PyJWK(json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())))
SETTINGS = IssuerSettings(issuer="https://issuer.example", audience=("https://orders.example",))


def genuine(**overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": SETTINGS.issuer, "aud": SETTINGS.audience[0], "exp": now + 600, "iat": now,
              "sub": "alice", "cnf": {"x5t#S256": "A" * 43}, **overrides}  # fmt: skip
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "k1", "typ": "at+jwt"})


GENUINE = genuine()


def _decoded(token: str) -> list[bytes] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return [base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts]
    except ValueError:
        return None


def verify(token: str) -> Any:
    """The JWT path of the proxy minus key lookup: what the header alone can refuse, then the
    signature and claims with the one key."""
    header = read_header(token)
    alg = check_header(header, SETTINGS)
    return verify_with_key(token, alg, PUBLIC, SETTINGS, time.time())


# --- strategies --------------------------------------------------------------------------------

schemes = st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "DPoP", "", "Bearer,", "Bear"])
b64ish = st.text(alphabet=st.sampled_from(sorted(B64TOKEN_CHARS)), min_size=0, max_size=200)
separators = st.sampled_from([" ", "  ", "\t", "", ",", " ,"])
header_values = st.one_of(
    st.text(max_size=300),
    st.builds(lambda s, sep, t: f"{s}{sep}{t}", schemes, separators, b64ish),
    st.builds(lambda s, sep, t: f"{s}{sep}{t}", schemes, separators, st.text(max_size=100)),
    st.builds(
        lambda n: "Bearer " + "A" * n, st.integers(MAX_TOKEN_LENGTH - 2, MAX_TOKEN_LENGTH + 2)
    ),
)


Edit = tuple[str, int, str, tuple[int, ...], str]


@st.composite
def edits(draw: st.DrawFn) -> Edit:
    """An edit of a genuine token: a flipped, inserted or deleted character, reordered or
    dropped segments, a replaced header, or appended text."""
    kind = draw(st.sampled_from(["flip", "insert", "delete", "segments", "header", "append"]))
    position = draw(st.integers(0, 10_000))
    char = draw(st.sampled_from(sorted(B64TOKEN_CHARS | {"!", " ", "\x00", "é"})))
    order = tuple(draw(st.lists(st.sampled_from([0, 1, 2]), min_size=0, max_size=5)))
    extra = ""
    if kind == "header":
        hdr = draw(
            st.dictionaries(
                st.sampled_from(["alg", "kid", "typ", "crit", "jku", "jwk", "x5u", "b64", "zip"]),
                st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                          st.sampled_from(["none", "HS256", "ES256", "RS256", "EdDSA"]),
                          st.lists(st.text(max_size=5), max_size=2)),
                max_size=5,
            )
        )  # fmt: skip
        extra = base64.urlsafe_b64encode(json.dumps(hdr).encode()).rstrip(b"=").decode()
    elif kind == "append":
        extra = draw(st.text(max_size=5))
    return (kind, position, char, order, extra)


def apply_edit(token: str, edit: Edit) -> str:
    kind, position, char, order, extra = edit
    i = position % len(token)
    if kind == "flip":
        return token[:i] + char + token[i + 1 :]
    if kind == "insert":
        return token[:i] + char + token[i:]
    if kind == "delete":
        return token[:i] + token[i + 1 :]
    parts = token.split(".")
    if kind == "segments":
        return ".".join(parts[j] for j in order)
    if kind == "header":
        return extra + "." + ".".join(parts[1:])
    return token + extra


def mutated_tokens() -> st.SearchStrategy[str]:
    return edits().map(lambda e: apply_edit(GENUINE, e))


# --- pure functions ------------------------------------------------------------------------------


@FUZZ
@given(values=st.lists(header_values, min_size=0, max_size=3), query=st.lists(st.text(max_size=15)))
def test_extract_bearer_returns_a_b64token_or_refuses(values: list[str], query: list[str]) -> None:
    try:
        token = extract_bearer(values, query)
    except AuthError as refusal:
        assert refusal.reason in (Reason.NO_TOKEN, Reason.MALFORMED_REQUEST)
        assert REFUSALS[refusal.reason].status in (400, 401)
        return
    assert len(values) == 1 and "access_token" not in query
    assert values[0][:7].lower() == "bearer "
    assert 0 < len(token) <= MAX_TOKEN_LENGTH
    assert set(token) <= B64TOKEN_CHARS
    assert values[0].endswith(token)


@FUZZ
@given(
    scheme=st.sampled_from(["Bearer ", "bearer ", "DPoP ", "dpop "]),
    token=st.one_of(header_values, b64ish, mutated_tokens(), st.just("a" * (MAX_TOKEN_LENGTH + 1))),
)
def test_a_token_the_miss_path_takes_without_extraction_is_what_extraction_returns(
    scheme: str, token: str
) -> None:
    """Pipeline.admit lets the verifier's read stand in for extract_credentials on one
    `Bearer `/`DPoP ` value with no query, and extracts only when the read refuses the token:
    sound because for a token the read takes (at most MAX_TOKEN_LENGTH characters of base64url
    and dots), extraction returns that very token and scheme."""
    if not (token and len(token) <= MAX_TOKEN_LENGTH and is_compact(token)):
        return
    assert extract_credentials([scheme + token], ()) == (token, scheme.lower() == "dpop ")


@FUZZ
@given(scheme=st.sampled_from(["bearer", "Bearer", "BEARER", "BeArEr"]), token=b64ish)
def test_extract_bearer_scheme_is_case_insensitive(scheme: str, token: str) -> None:
    value = f"{scheme} {token}"
    try:
        assert extract_bearer([value], []) == token
    except AuthError as refusal:
        assert refusal.reason is Reason.MALFORMED_REQUEST  # empty, or '=' not at the end


@FUZZ
@given(token=st.one_of(st.text(max_size=400), b64ish, mutated_tokens()))
def test_jwt_path_never_raises_anything_but_auth_error_nor_accepts_a_forgery(token: str) -> None:
    try:
        claims = verify(token)
    except AuthError as refusal:
        assert REFUSALS[refusal.reason].status == 401
        return
    # Accepted: then it must be the genuine token, byte for byte once decoded (base64url
    # spelling variants such as trailing '=' decode to the same bytes and carry no new claim).
    assert _decoded(token) == _decoded(GENUINE), token
    assert claims.subject == "alice"


@pytest.mark.slow
@FUZZ
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "cnf", "scope", "client_id"]),
        st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                  st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3),
                  st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2)),
        max_size=9,
    )
)  # fmt: skip
def test_any_signed_claim_set_is_accepted_only_when_it_meets_the_rules(
    claims: dict[str, Any],
) -> None:
    """Even with a genuine signature: no exception but AuthError, and an accepted token has the
    right iss, our aud and an exp in the future."""
    try:
        token = jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "k1"})
    except (TypeError, ValueError):
        return  # PyJWT will not even encode it (e.g. NaN); nothing to send
    try:
        out = verify(token)
    except AuthError as refusal:
        assert REFUSALS[refusal.reason].status == 401
        return
    assert claims["iss"] == SETTINGS.issuer
    aud = claims["aud"]
    assert aud == SETTINGS.audience[0] or (isinstance(aud, list) and SETTINGS.audience[0] in aud)
    assert out.expires_at + SETTINGS.leeway_seconds > time.time()


# --- through the running proxy ------------------------------------------------------------------


def _collect(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    found: list[Any] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True)
    @given(strategy)
    def grab(value: Any) -> None:
        found.append(value)

    grab()
    return found


PROXY_VALUES = _collect(header_values.filter(lambda v: not set(v) & {"\r", "\n"}), 40)
PROXY_EDITS = _collect(edits(), 40)


@pytest.mark.parametrize("chunk", range(4))
async def test_fuzzed_authorization_through_the_proxy_is_never_5xx_nor_a_forgery(
    running: Running, chunk: int
) -> None:
    """Arbitrary header values, and edits of a genuine bound token: 400/401/431, or 200 only when
    the edit left the decoded token unchanged (then the upstream saw exactly those)."""
    port, ctx = running.proxy.data_port, running.client_ssl("alice")
    good = running.issuer.mint(running.pki.alice)
    values = PROXY_VALUES[chunk::4]
    edited = ["Bearer " + apply_edit(good, e) for e in PROXY_EDITS[chunk::4]]
    values += [v for v in edited if not set(v) & {"\r", "\n"}]  # CR/LF: see test_raw_http
    accepted = 0
    for value in values:
        payload = (
            b"GET /fuzz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: "
            + value.encode("utf-8", "surrogateescape")
            + b"\r\n\r\n"
        )
        response = await raw_exchange(port, ctx, payload, timeout=3)
        if response.status == 200:
            accepted += 1
            assert _decoded(value[len("Bearer ") :].strip()) == _decoded(good), value[:80]
        else:
            # 431: the value alone is over listen.max_header_bytes.
            assert response.status in (400, 401, 431), (value[:80], response.raw[:200])
    assert len(running.upstream.seen) == accepted

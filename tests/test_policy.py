"""policy: path normalisation and rule matching, pure."""

from __future__ import annotations

import pytest

from proxy.checks.policy import (
    PathError,
    authorize,
    compile_policy,
    match_route,
    normalize_path,
    pattern_problem,
)
from proxy.errors import AuthError, Reason
from proxy.settings import PolicySettings, RouteSettings
from proxy.tokens.jwt import TokenClaims


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("/orders/7", "/orders/7"),
        ("/%6Frders", "/orders"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a/", "/a/"),
        ("/", "/"),
        ("/%7Euser", "/~user"),
        ("/v1.2/x", "/v1.2/x"),
    ],
)
def test_unambiguous_paths_normalise(raw: str, normalised: str) -> None:
    assert normalize_path(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "/a/../admin",
        "/a/./admin",
        "/..",
        "/a/%2e%2e/admin",
        "/a/%2E%2E/admin",
        "/a/.%2e/admin",
        "/a%2Fb",
        "/a%2fb",
        "//admin",
        "/a//b",
        "/a\\b",
        "/a%5Cb",
        "/admin;x=1",
        "/a%3Bb",
        "/a%252e%252e/admin",
        "/a%",
        "/a%2",
        "/a%zz",
        "/a%00b",
        "/a\x00b",
        "/a b",
        "/caf\u00e9",
        "admin",
        "*",
        "http://evil/admin",
    ],
)
def test_ambiguous_paths_are_refused(raw: str) -> None:
    with pytest.raises(PathError):
        normalize_path(raw)


def route(path: str, **kw: object) -> RouteSettings:
    return RouteSettings(path=path, **kw)  # type: ignore[arg-type]


POLICY = compile_policy(
    PolicySettings(
        routes=(
            route("/health", public=True),
            route("/orders/*", methods=("GET",), scopes=("orders:read",)),
            route("/orders/*", methods=("POST", "PUT"), scopes=("orders:write",)),
            route("/admin/**", clients=("ops",), scopes=("admin",)),
        )
    ),
    "enforce",
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/health", "/health"),
        ("GET", "/orders/7", "/orders/*"),
        ("POST", "/orders/7", "/orders/*"),
        ("DELETE", "/orders/7", None),
        ("GET", "/orders", None),
        ("GET", "/orders/7/items", None),
        ("GET", "/orders/", None),  # * needs a non-empty segment
        ("GET", "/admin", "/admin/**"),
        ("GET", "/admin/", "/admin/**"),
        ("DELETE", "/admin/users/1", "/admin/**"),
        ("GET", "/administrator", None),
        ("GET", "/ADMIN/x", None),
    ],
)
def test_first_matching_rule_wins(method: str, path: str, expected: str | None) -> None:
    found = match_route(POLICY, method, path)
    assert (found.path if found else None) == expected
    if found is not None and expected == "/orders/*":
        assert found.scopes == ({"orders:read"} if method == "GET" else {"orders:write"})


def claims(scope: str = "", client_id: str = "") -> TokenClaims:
    return TokenClaims("iss", "sub", client_id, scope, "jti", 2e9, 0, None)


def test_missing_scope_is_insufficient_scope_naming_the_required_scopes() -> None:
    admin = match_route(POLICY, "GET", "/admin/x")
    assert admin is not None
    with pytest.raises(AuthError) as info:
        authorize(admin, claims(scope="read", client_id="ops"))
    assert info.value.reason is Reason.INSUFFICIENT_SCOPE
    assert info.value.scope == "admin"
    with pytest.raises(AuthError) as info:
        authorize(admin, claims(scope="admin", client_id="web"))
    assert info.value.reason is Reason.CLIENT_NOT_ALLOWED
    authorize(admin, claims(scope="read admin", client_id="ops"))


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("/a/*/b", True),
        ("/a/**", True),
        ("/**", True),
        ("/a/**/b", False),
        ("/a*", False),
        ("/a/../b", False),
        ("a", False),
        ("/a;b", False),
    ],
)
def test_route_patterns_are_validated(pattern: str, ok: bool) -> None:
    assert (pattern_problem(pattern) is None) is ok

"""Route policy: which routes need which scopes, clients or certificate subjects. Pure; no I/O.

Binding proves possession; this step decides permission. A rule is only as good as the path it
is matched against, so path normalisation lives here too: anything that could be read two ways
(encoded slashes, dot segments, `//`, backslashes, `;` parameters, double encoding) is refused,
and the path forwarded upstream is exactly the normalised path that was matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.errors import AuthError, Reason

if TYPE_CHECKING:
    from proxy.settings import PolicySettings, RouteSettings
    from proxy.tokens.jwt import TokenClaims
    from proxy.trust.identity import ClientIdentity

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789ABCDEFabcdef")


class PathError(ValueError):
    """The path cannot be normalised unambiguously; the text says why (no secrets in paths)."""


def normalize_path(raw: str) -> str:
    """RFC 3986 §6.2.2 normalisation of a request path (no query), refusing ambiguity.

    Percent-encoded unreserved characters are decoded (`%2e` -> `.`, `%41` -> `A`); other
    percent-encodings are kept with upper-case hex. Refused: encoded `/`, `\\`, `;`, `%` or
    control characters, raw `\\`, `;` or non-printable bytes, empty segments and dot segments.
    """
    if not raw.startswith("/"):
        raise PathError("path must start with /")
    out: list[str] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "%":
            hexdigits = raw[i + 1 : i + 3]
            if len(hexdigits) != 2 or not set(hexdigits) <= _HEX:
                raise PathError("bad percent-encoding in path")
            decoded = chr(int(hexdigits, 16))
            if decoded in _UNRESERVED:
                out.append(decoded)
            elif decoded in "/\\;%" or ord(decoded) < 0x20 or ord(decoded) == 0x7F:
                # Encoded separators and double encoding mean different paths to different
                # servers; there is no single reading to check a rule against.
                raise PathError("encoded /, \\, ;, % or control character in path")
            else:
                out.append("%" + hexdigits.upper())
            i += 3
            continue
        if c in "\\;" or not 0x21 <= ord(c) <= 0x7E:
            raise PathError("backslash, ; or non-printable character in path")
        out.append(c)
        i += 1
    path = "".join(out)
    segments = path.split("/")[1:]
    if any(segment == "" for segment in segments[:-1]):
        raise PathError("empty path segment (//)")
    if any(segment in (".", "..") for segment in segments):
        raise PathError("dot segment in path")
    return path


def pattern_problem(pattern: str) -> str | None:
    """Why a configured route path is unusable, or None."""
    try:
        normalize_path(pattern.replace("*", "x"))
    except PathError as exc:
        return str(exc)
    segments = pattern.split("/")[1:]
    for index, segment in enumerate(segments):
        if "*" in segment and segment not in ("*", "**"):
            return "a wildcard must be a whole segment: * or **"
        if segment == "**" and index != len(segments) - 1:
            return "** may only be the last segment"
    return None


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # as configured, for logs and `certbound explain`
    segments: tuple[str, ...]
    is_prefix: bool  # ends with /**
    methods: frozenset[str]
    scopes: frozenset[str]
    clients: frozenset[str]
    subjects: frozenset[str]
    allow_unbound_tokens: bool
    public: bool
    binding_mode: str
    binding: str = "any"  # mtls | dpop | any

    def matches(self, method: str, segments: Sequence[str]) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.is_prefix:
            if len(segments) < len(self.segments):
                return False
        elif len(segments) != len(self.segments):
            return False
        return all(
            p == s or (p == "*" and s != "") for p, s in zip(self.segments, segments, strict=False)
        )


@dataclass(frozen=True, slots=True)
class Policy:
    routes: tuple[Route, ...]
    unmatched_allowed: bool

    @property
    def is_enabled(self) -> bool:
        return bool(self.routes)


def accepted_binding(policy: Policy, route: Route | None) -> str:
    """Which kinds of bound token a request may use (any | mtls | dpop), for its challenge:
    its route's `binding`; every kind without a policy or on a path no rule matches that
    policy.unmatched allows; "" (none to offer) on a path that is refused anyway."""
    if route is not None:
        return route.binding
    return "any" if not policy.is_enabled or policy.unmatched_allowed else ""


def compile_policy(settings: PolicySettings, default_binding_mode: str) -> Policy:
    return Policy(
        routes=tuple(_route(r, default_binding_mode) for r in settings.routes),
        unmatched_allowed=settings.unmatched == "allow",
    )


def _route(r: RouteSettings, default_binding_mode: str) -> Route:
    segments = r.path.split("/")[1:]
    is_prefix = bool(segments) and segments[-1] == "**"
    return Route(
        path=r.path,
        segments=tuple(segments[:-1] if is_prefix else segments),
        is_prefix=is_prefix,
        methods=frozenset(m.upper() for m in r.methods),
        scopes=frozenset(r.scopes),
        clients=frozenset(r.clients),
        subjects=frozenset(r.subjects),
        allow_unbound_tokens=r.allow_unbound_tokens,
        public=r.public,
        binding_mode=r.binding_mode or default_binding_mode,
        binding=r.binding,
    )


def match_route(policy: Policy, method: str, path: str) -> Route | None:
    """First matching rule for a normalised path; None when nothing matches."""
    segments = path.split("/")[1:]
    for route in policy.routes:
        if route.matches(method, segments):
            return route
    return None


def check_subject(route: Route, identity: ClientIdentity | None) -> None:
    if not route.subjects:
        return
    if identity is None:
        raise AuthError(Reason.NO_CLIENT_CERT, "this route names certificate subjects")
    if not (
        identity.subject in route.subjects or any(uri in route.subjects for uri in identity.uris)
    ):
        raise AuthError(Reason.SUBJECT_NOT_ALLOWED, "client certificate is not allowed here")


def authorize(route: Route, claims: TokenClaims) -> None:
    """Client and scope rules of a matched route (the certificate was checked before)."""
    if route.binding != "any":
        check_binding_kind(route.binding, claims.cnf)
    if route.clients and claims.client_id not in route.clients:
        raise AuthError(Reason.CLIENT_NOT_ALLOWED, "client is not allowed on this route")
    missing = route.scopes - set(claims.scope.split())
    if missing:
        # RFC 6750 §3.1: insufficient_scope, and the scope attribute names what is needed.
        raise AuthError(
            Reason.INSUFFICIENT_SCOPE,
            "token lacks a scope this route requires",
            scope=" ".join(sorted(route.scopes)),
        )


def check_binding_kind(kind: str, cnf: object) -> None:
    """A route's `binding: mtls | dpop`: the token must carry that kind of confirmation (a
    token with both satisfies either). Whether it matches was, or will be, checked by binding."""
    member = "x5t#S256" if kind == "mtls" else "jkt"
    if not (isinstance(cnf, dict) and cnf.get(member) is not None):
        raise AuthError(
            Reason.WRONG_BINDING_KIND,
            f"this route requires a {'certificate' if kind == 'mtls' else 'DPoP'}-bound token",
        )

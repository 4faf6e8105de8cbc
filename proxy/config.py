"""Typed settings: one YAML file, every key overridable by CERTBOUND_* environment variables.

Validation collects every problem with its key path, so an operator fixes them in one go
(unknown keys are errors: a typo must not silently fall back to a default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "CERTBOUND_"
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
KNOWN_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "HS256",
        "HS384",
        "HS512",
    }
)


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = "0.0.0.0"  # noqa: S104 - a sidecar listens on the pod IP
    port: int = 8443
    workers: int = 1  # 0: one per usable CPU
    max_connections: int = 10000  # per worker; further connections are closed at once
    idle_timeout_seconds: float = 30.0  # to complete a request, and between kept-alive ones
    max_header_bytes: int = 65536  # request line + headers; over it: 431
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    min_version: str = "1.2"
    session_tickets: int = 0  # TLS 1.3 tickets issued per full handshake (resumption); 0-4
    x509_strict: bool = False  # OpenSSL's extra checks (key identifiers, ...) on client chains
    crl_files: tuple[str, ...] = ()  # PEM or DER CRLs of the client CAs, one per file
    revocation_unavailable: str = "refuse"  # refuse | allow: no CRL for the issuer, or stale
    fetch_crls: bool = False  # download the CAs' CRLs from their http CRL Distribution Points
    crl_fetch_interval_seconds: float = 3600.0  # longest time between two downloads of a CRL
    ocsp: str = "off"  # off | leaf: ask the leaf's AIA OCSP responder once per connection
    # required: no certificate, no handshake. optional: a connection without one is accepted;
    # its requests pass only with a DPoP-bound token or on a public route.
    client_cert: str = "required"


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = "http://127.0.0.1:8080"
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0
    max_connections: int = 100
    upgrade_idle_timeout_seconds: float = 3600.0  # an upgraded (WebSocket) connection, idle


@dataclass(frozen=True, slots=True)
class IntrospectionSettings:
    enabled: bool = False
    endpoint: str = ""  # empty: the issuer metadata's introspection_endpoint
    client_id: str = ""
    client_secret: str = ""  # client_secret_basic; prefer client_secret_file
    client_secret_file: str = ""
    client_cert_file: str = ""  # RFC 8705 §2 mTLS client authentication instead of a secret
    client_key_file: str = ""
    ca_file: str = ""  # CAs for the endpoint's certificate; empty: the system's
    timeout_seconds: float = 5.0
    cache_ttl_seconds: float = 300.0
    negative_cache_ttl_seconds: float = 10.0
    cache_size: int = 10000


DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    """One trusted issuer: an entry of tokens.issuers, or the single-issuer shorthand."""

    name: str = ""  # metric label and audit field; empty: the entry's index
    issuer: str = ""
    audience: tuple[str, ...] = ()  # the token's aud must name one of these
    jwks_uri: str = ""
    jwks_file: str = ""
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: int = 30
    require_typ_at_jwt: bool = False
    max_lifetime_seconds: int = 0  # exp - iat over this is refused; 0: off
    introspection: IntrospectionSettings = field(default_factory=IntrospectionSettings)


@dataclass(frozen=True, slots=True)
class TokenSettings:
    # The single-issuer shorthand: a one-entry `issuers` list (trusted_issuers()).
    issuer: str = ""
    audience: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks_file: str = ""
    # These four are also the defaults of every tokens.issuers entry that does not set them.
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: int = 30
    require_typ_at_jwt: bool = False
    max_lifetime_seconds: int = 0
    jwks_refresh_seconds: float = 300.0
    jwks_min_refetch_seconds: float = 30.0
    cache_size: int = 10000
    accept_jwt: bool = True  # false: every token is introspected (opaque-only deployments)
    introspection: IntrospectionSettings = field(default_factory=IntrospectionSettings)
    issuers: tuple[IssuerSettings, ...] = ()


# Keys of an issuers entry that default to the tokens-level value when the entry omits them.
INHERITED_ISSUER_KEYS = (
    "algorithms",
    "leeway_seconds",
    "require_typ_at_jwt",
    "max_lifetime_seconds",
)
# The single-issuer keys that tokens.issuers replaces; setting both forms is a clash.
SHORTHAND_ISSUER_KEYS = ("issuer", "audience", "jwks_uri", "jwks_file", "introspection")


def trusted_issuers(t: TokenSettings) -> tuple[IssuerSettings, ...]:
    """tokens.issuers, or the single-issuer keys as a one-entry list; every entry named
    (its `name`, else its index) and with its audience as a tuple."""
    entries = t.issuers or (
        IssuerSettings(
            issuer=t.issuer,
            audience=t.audience,
            jwks_uri=t.jwks_uri,
            jwks_file=t.jwks_file,
            algorithms=t.algorithms,
            leeway_seconds=t.leeway_seconds,
            require_typ_at_jwt=t.require_typ_at_jwt,
            max_lifetime_seconds=t.max_lifetime_seconds,
            introspection=t.introspection,
        ),
    )
    return tuple(
        dataclasses.replace(e, name=e.name or str(index), audience=_audiences(e.audience))
        for index, e in enumerate(entries)
    )


def _audiences(value: object) -> tuple[str, ...]:
    # Settings built in code may pass one string; tuple("abc") would be three audiences.
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(str(v) for v in value) if isinstance(value, tuple | list) else ()


@dataclass(frozen=True, slots=True)
class BindingSettings:
    mode: str = "enforce"  # enforce | report_only


@dataclass(frozen=True, slots=True)
class RouteSettings:
    path: str = ""
    methods: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    allow_unbound_tokens: bool = False
    public: bool = False
    binding_mode: str = ""  # empty: binding.mode
    binding: str = "any"  # mtls | dpop | any: which kind of key binding the token must carry


@dataclass(frozen=True, slots=True)
class PolicySettings:
    unmatched: str = "deny"  # deny | allow; only consulted when routes are configured
    routes: tuple[RouteSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientCertSettings:
    source: str = "tls"  # tls | header
    header_format: str = "rfc9440"  # rfc9440 (Client-Cert) | xfcc (X-Forwarded-Client-Cert)
    trusted_proxies: tuple[str, ...] = ()  # CIDRs allowed to send the header
    trusted_proxy_subjects: tuple[str, ...] = ()  # and, if set, only over mTLS with these


@dataclass(frozen=True, slots=True)
class DPoPSettings:
    algorithms: tuple[str, ...] = ("ES256", "PS256", "EdDSA", "RS256")  # asymmetric only
    max_age_seconds: int = 300  # how old a proof's iat may be (plus the issuer's leeway)
    external_base_url: str = ""  # https://host[:port][/prefix] clients use; empty: Host header
    replay_cache_size: int = 100000  # jti values remembered (per process) within the window
    # "" keeps jti values in this process; redis:// or rediss:// shares them between replicas.
    replay_cache: str = ""
    replay_cache_timeout_seconds: float = 0.1  # per Redis round trip, connecting included
    replay_cache_unavailable: str = "refuse"  # refuse | allow, when Redis does not answer
    nonce: bool = False  # RFC 9449 §9: proofs must carry a nonce we issued (use_dpop_nonce)
    nonce_rotation_seconds: int = 300  # a nonce is good in its period and the next one
    nonce_secret_file: str = ""  # shared HMAC key so replicas accept each other's nonces


@dataclass(frozen=True, slots=True)
class AdminSettings:
    host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet on the pod IP
    port: int = 9090


@dataclass(frozen=True, slots=True)
class ForwardingSettings:
    client_cert_header: bool = False
    upgrade_protocols: tuple[str, ...] = ("websocket",)  # what an Upgrade request may ask for
    # header name -> claim path (`realm_access.roles`), in the order written
    claim_headers: tuple[tuple[str, str], ...] = ()
    authorization: str = "pass"  # pass | strip (the token never reaches the workload)


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    audit_accepted: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    listen: ListenSettings = field(default_factory=ListenSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    binding: BindingSettings = field(default_factory=BindingSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    client_cert: ClientCertSettings = field(default_factory=ClientCertSettings)
    dpop: DPoPSettings = field(default_factory=DPoPSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    forwarding: ForwardingSettings = field(default_factory=ForwardingSettings)
    log: LogSettings = field(default_factory=LogSettings)


class ConfigError(Exception):
    """All configuration problems at once, one `key.path: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read YAML (if given), apply environment overrides, validate. Raises ConfigError."""
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of sections"])
        raw = loaded
    _apply_env(raw, os.environ if environ is None else environ, problems)
    settings: Settings = _build(Settings, raw, "", problems)
    settings = _inherit_issuer_defaults(settings, raw)
    # Value checks run even after type errors, so every problem is reported in one go; a key
    # whose value could not be read is not reported twice.
    unreadable = {p.split(":", 1)[0] for p in problems}
    problems.extend(p for p in validate(settings) if p.split(":", 1)[0] not in unreadable)
    if problems:
        raise ConfigError(problems)
    return settings


def _inherit_issuer_defaults(settings: Settings, raw: dict[str, Any]) -> Settings:
    """An issuers entry that omits algorithms, leeway_seconds, require_typ_at_jwt or
    max_lifetime_seconds gets the tokens-level value."""
    t = settings.tokens
    raw_tokens = raw.get("tokens")
    raw_entries = raw_tokens.get("issuers") if isinstance(raw_tokens, dict) else None
    if not t.issuers or not isinstance(raw_entries, list):
        return settings
    entries = []
    for entry, given in zip(t.issuers, raw_entries, strict=False):
        given_keys = given if isinstance(given, dict) else {}
        inherited = {k: getattr(t, k) for k in INHERITED_ISSUER_KEYS if k not in given_keys}
        entries.append(dataclasses.replace(entry, **inherited))
    tokens = dataclasses.replace(t, issuers=tuple(entries))
    return dataclasses.replace(settings, tokens=tokens)


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> None:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(keys) < 2 or not all(keys):
            problems.append(f"{name}: expected {ENV_PREFIX}SECTION__KEY")
            continue
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        node: object = raw
        for depth, key in enumerate(keys[:-1]):
            assert isinstance(node, dict)
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                problems.append(f"{'.'.join(keys)}: {'.'.join(keys[: depth + 1])} is not a mapping")
                break
        else:
            assert isinstance(node, dict)
            node[keys[-1]] = parsed


def _build(cls: type[Any], data: object, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key")
    values: dict[str, Any] = {}
    for name in fields:
        if name not in data:
            continue
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(typing.cast(type[Any], hint), data[name], key + ".", problems)
        else:
            converted = _convert(hint, data[name], key, problems)
            if converted is not None:
                values[name] = converted
    return cls(**values)


def _convert(hint: Any, value: object, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{key}: expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{key}: expected a number, got {value!r}")
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # `min_version: 1.2` is written without quotes by most people
        problems.append(f"{key}: expected a string, got {value!r}")
    elif origin is tuple and typing.get_origin(typing.get_args(hint)[0]) is tuple:
        # A mapping of strings (forwarding.claim_headers), kept as ordered pairs.
        if isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return tuple(value.items())
        problems.append(f"{key}: expected a mapping of strings to strings, got {value!r}")
    elif origin is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        item = typing.cast(type[Any], typing.get_args(hint)[0])
        if isinstance(value, list):
            return tuple(_build(item, v, f"{key}[{i}].", problems) for i, v in enumerate(value))
        problems.append(f"{key}: expected a list of mappings, got {value!r}")
    elif origin is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        problems.append(f"{key}: expected a list of strings, got {value!r}")
    elif isinstance(hint, types.UnionType):
        raise TypeError(f"unsupported settings type {hint}")
    return None


def validate(s: Settings) -> list[str]:
    """Checks on values (not on types, which _build did). Does not touch the network."""
    problems: list[str] = []

    def port(key: str, value: int) -> None:
        if not 0 <= value <= 65535:
            problems.append(f"{key}: {value} is not a TCP port (0-65535)")

    def positive(key: str, value: float) -> None:
        if value <= 0:
            problems.append(f"{key}: must be greater than 0, got {value}")

    def readable(key: str, value: str) -> None:
        if not value:
            problems.append(f"{key}: required")
        elif not os.access(value, os.R_OK):
            problems.append(f"{key}: file {value!r} does not exist or is not readable")

    port("listen.port", s.listen.port)
    port("admin.port", s.admin.port)
    positive("listen.max_connections", s.listen.max_connections)
    positive("listen.idle_timeout_seconds", s.listen.idle_timeout_seconds)
    if not 1024 <= s.listen.max_header_bytes <= 1048576:
        problems.append(
            f"listen.max_header_bytes: must be 1024 to 1048576, got {s.listen.max_header_bytes}"
        )
    if s.listen.event_loop not in EVENT_LOOPS:
        problems.append(
            f"listen.event_loop: one of {', '.join(EVENT_LOOPS)}, got {s.listen.event_loop!r}"
        )
    elif s.listen.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        problems.append("listen.event_loop: uvloop is not installed (use auto or asyncio)")
    if s.listen.workers < 0 or s.listen.workers > 64:
        problems.append(f"listen.workers: must be 0 (one per CPU) to 64, got {s.listen.workers}")
    if s.listen.workers != 1 and (s.listen.port == 0 or s.admin.port == 0):
        problems.append("listen.workers: several workers need fixed listen.port and admin.port")
    if s.listen.port == s.admin.port and s.listen.port != 0:
        problems.append("admin.port: must differ from listen.port (metrics never on mTLS port)")
    readable("tls.cert_file", s.tls.cert_file)
    readable("tls.key_file", s.tls.key_file)
    readable("tls.client_ca_file", s.tls.client_ca_file)
    if not 0 <= s.tls.session_tickets <= 4:
        problems.append(f"tls.session_tickets: must be 0 to 4, got {s.tls.session_tickets}")
    if s.dpop.nonce_secret_file:
        readable("dpop.nonce_secret_file", s.dpop.nonce_secret_file)
        with contextlib.suppress(OSError):
            # A short key makes nonces guessable, and a client could then make proofs ahead.
            if len(read_nonce_key(s.dpop.nonce_secret_file)) < 32:
                problems.append(
                    "dpop.nonce_secret_file: holds fewer than 32 bytes "
                    "(make one with: openssl rand -base64 48)"
                )
    for index, crl_file in enumerate(s.tls.crl_files):
        readable(f"tls.crl_files[{index}]", crl_file)
    if s.tls.revocation_unavailable not in ("refuse", "allow"):
        problems.append(
            f"tls.revocation_unavailable: refuse or allow, got {s.tls.revocation_unavailable!r}"
        )
    if s.tls.client_cert not in ("required", "optional"):
        problems.append(f"tls.client_cert: required or optional, got {s.tls.client_cert!r}")
    if s.tls.ocsp not in ("off", "leaf"):
        problems.append(f"tls.ocsp: off or leaf, got {s.tls.ocsp!r}")
    if not 60 <= s.tls.crl_fetch_interval_seconds <= 86400:
        problems.append(
            "tls.crl_fetch_interval_seconds: must be 60 to 86400, "
            f"got {s.tls.crl_fetch_interval_seconds}"
        )
    if s.tls.min_version not in ("1.2", "1.3"):
        problems.append(f'tls.min_version: must be "1.2" or "1.3", got {s.tls.min_version!r}')

    url = urlsplit(s.upstream.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        problems.append(f"upstream.url: must be an http:// or https:// URL, got {s.upstream.url!r}")
    elif url.query or url.fragment:
        problems.append("upstream.url: must not have a query or fragment")
    positive("upstream.timeout_seconds", s.upstream.timeout_seconds)
    positive("upstream.connect_timeout_seconds", s.upstream.connect_timeout_seconds)
    positive("upstream.max_connections", s.upstream.max_connections)
    positive("upstream.upgrade_idle_timeout_seconds", s.upstream.upgrade_idle_timeout_seconds)
    for protocol in s.forwarding.upgrade_protocols:
        if not protocol or not all(c.isalnum() or c in "-._" for c in protocol):
            problems.append(
                f"forwarding.upgrade_protocols: {protocol!r} is not a protocol name (RFC 9110 §7.8)"
            )

    from proxy.tokens.validate import validate_tokens

    problems.extend(validate_tokens(s.tokens))
    problems.extend(_validate_forwarding(s.forwarding))
    problems.extend(_validate_policy(s))
    problems.extend(_validate_client_cert(s.client_cert))
    problems.extend(_validate_dpop(s.dpop))
    if s.log.level.lower() not in ("debug", "info", "warning", "error"):
        problems.append(f"log.level: one of debug, info, warning, error; got {s.log.level!r}")
    return problems


def _validate_forwarding(f: ForwardingSettings) -> list[str]:
    from proxy.claim_headers import claim_path_problem, header_name_problem

    problems = []
    if f.authorization not in ("pass", "strip"):
        problems.append(f"forwarding.authorization: pass or strip, got {f.authorization!r}")
    seen: set[str] = set()
    for name, path in f.claim_headers:
        key = f"forwarding.claim_headers.{name}"
        problem = header_name_problem(name)
        if problem is None and name.lower() in seen:
            problem = "named twice (header names are case-insensitive)"
        seen.add(name.lower())
        if problem is None:
            problem = claim_path_problem(path)
        if problem is not None:
            problems.append(f"{key}: {problem}")
    return problems


BINDING_MODES = ("enforce", "report_only")
BINDING_KINDS = ("mtls", "dpop", "any")


def _validate_policy(s: Settings) -> list[str]:
    from proxy.policy import pattern_problem

    problems = []
    if s.binding.mode not in BINDING_MODES:
        problems.append(f"binding.mode: enforce or report_only, got {s.binding.mode!r}")
    if s.policy.unmatched not in ("deny", "allow"):
        problems.append(f"policy.unmatched: deny or allow, got {s.policy.unmatched!r}")
    for index, route in enumerate(s.policy.routes):
        key = f"policy.routes[{index}]"
        if not route.path:
            problems.append(f"{key}.path: required")
        elif (problem := pattern_problem(route.path)) is not None:
            problems.append(f"{key}.path: {route.path!r}: {problem}")
        if route.binding_mode and route.binding_mode not in BINDING_MODES:
            problems.append(
                f"{key}.binding_mode: enforce or report_only, got {route.binding_mode!r}"
            )
        if route.binding not in BINDING_KINDS:
            problems.append(f"{key}.binding: mtls, dpop or any, got {route.binding!r}")
        elif route.binding != "any" and (route.public or route.allow_unbound_tokens):
            problems.append(
                f"{key}.binding: {route.binding} asks for a bound token; a public route or "
                "allow_unbound_tokens cannot apply with it"
            )
        for method in route.methods:
            if not method.isalpha():
                problems.append(f"{key}.methods: {method!r} is not an HTTP method")
        if route.public and (route.scopes or route.clients or route.allow_unbound_tokens):
            problems.append(
                f"{key}: a public route takes no token, so scopes, clients and "
                "allow_unbound_tokens cannot apply (use subjects to restrict certificates)"
            )
    return problems


def _validate_client_cert(c: ClientCertSettings) -> list[str]:
    import ipaddress

    problems = []
    if c.source not in ("tls", "header"):
        problems.append(f"client_cert.source: tls or header, got {c.source!r}")
    if c.header_format not in ("rfc9440", "xfcc"):
        problems.append(f"client_cert.header_format: rfc9440 or xfcc, got {c.header_format!r}")
    for cidr in c.trusted_proxies:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            problems.append(f"client_cert.trusted_proxies: {cidr!r} is not a CIDR")
    if c.source == "header" and not c.trusted_proxies:
        problems.append(
            "client_cert.trusted_proxies: required with source: header "
            "(otherwise anyone could claim any certificate)"
        )
    return problems


def read_nonce_key(path: str) -> bytes:
    """dpop.nonce_secret_file's key: the file's bytes, without the line end a Secret made
    with --from-file or an editor leaves."""
    return Path(path).read_bytes().strip()


def _validate_dpop(d: DPoPSettings) -> list[str]:
    from proxy.tokens.dpop import ASYMMETRIC_ALGORITHMS

    problems = []
    if not d.algorithms:
        problems.append("dpop.algorithms: at least one algorithm")
    for alg in d.algorithms:
        if alg not in ASYMMETRIC_ALGORITHMS:
            problems.append(
                f"dpop.algorithms: {alg!r} is not an asymmetric JWS algorithm "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
    if not 1 <= d.max_age_seconds <= 3600:
        problems.append(f"dpop.max_age_seconds: must be 1 to 3600, got {d.max_age_seconds}")
    if not 1 <= d.replay_cache_size <= 10_000_000:
        problems.append(f"dpop.replay_cache_size: must be 1 to 10000000, got {d.replay_cache_size}")
    problems.extend(_validate_replay_cache(d))
    if not 10 <= d.nonce_rotation_seconds <= 86400:
        problems.append(
            f"dpop.nonce_rotation_seconds: must be 10 to 86400, got {d.nonce_rotation_seconds}"
        )
    if d.nonce_secret_file and not d.nonce:
        problems.append("dpop.nonce_secret_file: set, but dpop.nonce is false")
    if d.external_base_url:
        url = urlsplit(d.external_base_url)
        if url.scheme != "https" or not url.hostname:
            problems.append(
                f"dpop.external_base_url: must be an https:// URL, got {d.external_base_url!r}"
            )
        elif url.query or url.fragment:
            problems.append("dpop.external_base_url: must not have a query or fragment")
    return problems


def _validate_replay_cache(d: DPoPSettings) -> list[str]:
    problems = []
    if d.replay_cache:
        from proxy.tokens.resp import RedisAddress

        try:
            RedisAddress.parse(d.replay_cache)
        except ValueError as exc:
            # Never echo the value: it may hold the Redis password.
            problems.append(
                "dpop.replay_cache: must be empty or redis://[[user]:password@]host[:port][/db] "
                f"or rediss://... ({exc})"
            )
    if not 0.005 <= d.replay_cache_timeout_seconds <= 5:
        problems.append(
            "dpop.replay_cache_timeout_seconds: must be 0.005 to 5, "
            f"got {d.replay_cache_timeout_seconds}"
        )
    if d.replay_cache_unavailable not in ("refuse", "allow"):
        problems.append(
            f"dpop.replay_cache_unavailable: refuse or allow, got {d.replay_cache_unavailable!r}"
        )
    return problems

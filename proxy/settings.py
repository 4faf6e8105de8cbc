"""Typed settings: the shape and defaults of certbound's configuration, as frozen dataclasses.

Reading (YAML, CERTBOUND_* variables) and validation live in proxy/config/; this module imports
nothing of the project, so every other module may depend on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
    # per worker: TLS handshakes in progress; a new connection over it cuts the oldest one
    max_handshakes: int = 1000
    handshake_timeout_seconds: float = 10.0  # from accept to a completed handshake
    # The caps above are lowered to fit this; 0: the container's memory limit (cgroup), if any
    memory_budget_mib: int = 0
    idle_timeout_seconds: float = 30.0  # to complete a request, and between kept-alive ones
    # A client whose send buffer is full and that reads nothing for this long is aborted
    # (nginx's send_timeout); its upstream connection goes back to the pool at once.
    send_timeout_seconds: float = 30.0
    # A request body with no new byte for this long is refused 408 (nginx client_body_timeout).
    body_timeout_seconds: float = 30.0
    # Request bodies are read up to this many bytes before an upstream connection is taken
    # (nginx proxy_request_buffering): a slow upload costs no pool connection until then.
    request_buffer_bytes: int = 65536
    max_header_bytes: int = 65536  # request line + headers; over it: 431
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    # Mozilla Server Side TLS 5.7: intermediate (TLS 1.2 and 1.3) | modern (TLS 1.3 only).
    profile: str = "intermediate"
    min_version: str = ""  # "1.3" raises intermediate's floor; empty: the profile's
    # The most intermediate CA certificates between a client's certificate and a CA of
    # client_ca_file (OpenSSL's and nginx's verify depth).
    verify_depth: int = 3
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
    jwks_min_refetch_seconds: float = 5.0
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


BINDING_MODES = ("enforce", "report_only")
BINDING_KINDS = ("mtls", "dpop", "any")

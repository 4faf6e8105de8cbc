"""check-config: checks on the values of typed settings (types were checked while building
them). Reports every problem with its key path; reads local files, never the network."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from urllib.parse import urlsplit

from proxy.checks.policy import pattern_problem
from proxy.config.tokens import validate_tokens
from proxy.settings import (
    BINDING_KINDS,
    BINDING_MODES,
    EVENT_LOOPS,
    ClientCertSettings,
    DPoPSettings,
    ForwardingSettings,
    Settings,
)
from proxy.tokens.claim_headers import claim_path_problem, header_name_problem
from proxy.tokens.dpop import ASYMMETRIC_ALGORITHMS
from proxy.tokens.resp import RedisAddress
from proxy.trust.profiles import PROFILES, version_conflict


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
    positive("listen.max_handshakes", s.listen.max_handshakes)
    if not 1 <= s.listen.handshake_timeout_seconds <= 60:
        problems.append(
            "listen.handshake_timeout_seconds: must be 1 to 60, "
            f"got {s.listen.handshake_timeout_seconds}"
        )
    if s.listen.memory_budget_mib != 0 and not 64 <= s.listen.memory_budget_mib <= 1048576:
        problems.append(
            "listen.memory_budget_mib: 0 (the container's memory limit) or 64 to 1048576, "
            f"got {s.listen.memory_budget_mib}"
        )
    positive("listen.send_timeout_seconds", s.listen.send_timeout_seconds)
    positive("listen.body_timeout_seconds", s.listen.body_timeout_seconds)
    if not 0 <= s.listen.request_buffer_bytes <= 16 * 1048576:
        problems.append(
            "listen.request_buffer_bytes: must be 0 to 16777216, "
            f"got {s.listen.request_buffer_bytes}"
        )
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
    if s.tls.profile not in PROFILES:
        problems.append(f"tls.profile: intermediate or modern, got {s.tls.profile!r}")
    if s.tls.min_version not in ("", "1.2", "1.3"):
        problems.append(f'tls.min_version: must be "1.2" or "1.3", got {s.tls.min_version!r}')
    elif conflict := version_conflict(s.tls.profile, s.tls.min_version):
        problems.append(conflict)
    if not 0 <= s.tls.verify_depth <= 10:
        problems.append(f"tls.verify_depth: must be 0 to 10, got {s.tls.verify_depth}")

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

    problems.extend(validate_tokens(s.tokens))
    problems.extend(_validate_forwarding(s.forwarding))
    problems.extend(_validate_policy(s))
    problems.extend(_validate_client_cert(s.client_cert))
    problems.extend(_validate_dpop(s.dpop))
    if s.log.level.lower() not in ("debug", "info", "warning", "error"):
        problems.append(f"log.level: one of debug, info, warning, error; got {s.log.level!r}")
    return problems


def _validate_forwarding(f: ForwardingSettings) -> list[str]:
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


def _validate_policy(s: Settings) -> list[str]:
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


def _validate_dpop(d: DPoPSettings) -> list[str]:
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


def read_nonce_key(path: str) -> bytes:
    """dpop.nonce_secret_file's key: the file's bytes, without the line end a Secret made
    with --from-file or an editor leaves."""
    return Path(path).read_bytes().strip()

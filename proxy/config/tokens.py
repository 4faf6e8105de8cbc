"""check-config for tokens.*: each trusted issuer (an entry of tokens.issuers, or the
single-issuer shorthand) and the settings they share. Values only; never the network."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from proxy.settings import (
    INHERITED_ISSUER_KEYS,
    KNOWN_ALGORITHMS,
    SHORTHAND_ISSUER_KEYS,
    IntrospectionSettings,
    IssuerSettings,
    TokenSettings,
    trusted_issuers,
)

# A metric label value and an audit field: short, and nothing a log reader could misparse.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def validate_tokens(t: TokenSettings) -> list[str]:
    problems: list[str] = []
    shorthand = _shorthand_keys_set(t)
    if t.issuers and shorthand:
        problems.append(
            "tokens.issuers: the single-issuer keys "
            + ", ".join(f"tokens.{key}" for key in shorthand)
            + " are a shorthand for a one-entry tokens.issuers list; set one form, not both "
            "(move them into an entry of tokens.issuers; with the Helm chart, set "
            "proxy.config.tokens.issuer and audience to null)"
        )
    if t.issuers:
        problems.extend(_inheritable("tokens.", t))
        for index, (entry, named) in enumerate(zip(t.issuers, trusted_issuers(t), strict=True)):
            prefix = f"tokens.issuers[{index}]."
            if entry.name and _NAME.fullmatch(entry.name) is None:
                problems.append(
                    f"{prefix}name: {entry.name!r} must be 1-63 letters, digits, '_', '.' or '-'"
                )
            problems.extend(_issuer(prefix, named, t))
        problems.extend(_unique(t))
    else:
        [entry] = trusted_issuers(t)
        problems.extend(_issuer("tokens.", entry, None))
    if t.jwks_refresh_seconds <= 0:
        problems.append(
            f"tokens.jwks_refresh_seconds: must be greater than 0, got {t.jwks_refresh_seconds}"
        )
    if not 0 <= t.jwks_min_refetch_seconds <= 60:
        # A request with an unknown kid may wait this long for the refetch that judges it.
        problems.append(
            f"tokens.jwks_min_refetch_seconds: must be 0 to 60, got {t.jwks_min_refetch_seconds}"
        )
    if t.cache_size < 0:
        problems.append("tokens.cache_size: must be 0 (off) or more")
    introspecting = [e for e in trusted_issuers(t) if e.introspection.enabled]
    if not t.accept_jwt and not introspecting:
        problems.append("tokens.accept_jwt: false needs tokens.introspection.enabled: true")
    if len(introspecting) > 1:
        problems.append(
            "tokens.issuers: introspection is enabled for "
            + ", ".join(e.name for e in introspecting)
            + "; an opaque token names no issuer, so at most one issuer may introspect"
        )
    return problems


def _shorthand_keys_set(t: TokenSettings) -> list[str]:
    # introspection counts as set when any of its keys differs from the default
    unset = {"introspection": IntrospectionSettings()}
    return [k for k in SHORTHAND_ISSUER_KEYS if getattr(t, k) and getattr(t, k) != unset.get(k)]


def _issuer(prefix: str, e: IssuerSettings, shared: TokenSettings | None) -> list[str]:
    """One issuer's keys. `shared`: the tokens-level values an entry inherited, reported once
    at tokens.* rather than again for every entry that took them."""
    problems: list[str] = []
    if not e.issuer:
        problems.append(f"{prefix}issuer: required")
    elif urlsplit(e.issuer).scheme not in ("http", "https"):
        problems.append(f"{prefix}issuer: must be an http(s) URL, got {e.issuer!r}")
    if not e.audience:
        problems.append(f"{prefix}audience: required")
    elif not all(e.audience):
        problems.append(f"{prefix}audience: an empty audience matches nothing")
    if e.jwks_uri and e.jwks_file:
        problems.append(f"{prefix}jwks_uri: set either jwks_uri or jwks_file, not both")
    if e.jwks_uri and urlsplit(e.jwks_uri).scheme not in ("http", "https"):
        problems.append(f"{prefix}jwks_uri: must be an http(s) URL, got {e.jwks_uri!r}")
    if e.jwks_file and not os.access(e.jwks_file, os.R_OK):
        problems.append(
            f"{prefix}jwks_file: file {e.jwks_file!r} does not exist or is not readable"
        )
    if shared is None or any(getattr(e, k) != getattr(shared, k) for k in INHERITED_ISSUER_KEYS):
        problems.extend(_inheritable(prefix, e))
    problems.extend(_introspection(prefix + "introspection", e.introspection))
    return problems


def _inheritable(prefix: str, e: IssuerSettings | TokenSettings) -> list[str]:
    problems: list[str] = []
    if not e.algorithms:
        problems.append(f"{prefix}algorithms: at least one algorithm is required")
    for alg in e.algorithms:
        if alg.lower() == "none":
            problems.append(f'{prefix}algorithms: "none" is never allowed (unsigned tokens)')
        elif alg not in KNOWN_ALGORITHMS:
            problems.append(
                f"{prefix}algorithms: unknown algorithm {alg!r} "
                f"(known: {', '.join(sorted(KNOWN_ALGORITHMS))})"
            )
    if not 0 <= e.leeway_seconds <= 300:
        problems.append(f"{prefix}leeway_seconds: must be 0..300, got {e.leeway_seconds}")
    if e.max_lifetime_seconds < 0:
        problems.append(
            f"{prefix}max_lifetime_seconds: must be 0 (off) or more, got {e.max_lifetime_seconds}"
        )
    return problems


def _unique(t: TokenSettings) -> list[str]:
    """Names and `iss` values must each pick exactly one entry."""
    problems: list[str] = []
    names: dict[str, int] = {}
    issuers: dict[str, int] = {}
    for index, e in enumerate(trusted_issuers(t)):
        if e.name in names:
            problems.append(
                f"tokens.issuers[{index}].name: {e.name!r} is also the name of entry "
                f"{names[e.name]} (an unnamed entry is called by its index)"
            )
        names.setdefault(e.name, index)
        if e.issuer and e.issuer in issuers:
            problems.append(
                f"tokens.issuers[{index}].issuer: {e.issuer!r} is also entry {issuers[e.issuer]}"
                " (the token's iss picks one entry)"
            )
        issuers.setdefault(e.issuer, index)
    return problems


def _introspection(key: str, i: IntrospectionSettings) -> list[str]:
    problems: list[str] = []
    if not i.enabled:
        return problems
    if i.endpoint and urlsplit(i.endpoint).scheme not in ("http", "https"):
        problems.append(f"{key}.endpoint: must be an http(s) URL, got {i.endpoint!r}")
    if not i.client_id:
        problems.append(f"{key}.client_id: required (RFC 7662 §2.1 client auth)")
    has_secret = bool(i.client_secret or i.client_secret_file)
    has_cert = bool(i.client_cert_file or i.client_key_file)
    if has_secret == has_cert:
        problems.append(
            f"{key}: set either client_secret(_file) or client_cert_file and "
            "client_key_file (mTLS client authentication), exactly one"
        )
    if i.client_secret and i.client_secret_file:
        problems.append(f"{key}.client_secret: set client_secret or _file, not both")
    for name, value in (
        ("client_secret_file", i.client_secret_file),
        ("client_cert_file", i.client_cert_file),
        ("client_key_file", i.client_key_file),
        ("ca_file", i.ca_file),
    ):
        if value and not os.access(value, os.R_OK):
            problems.append(f"{key}.{name}: file {value!r} is not readable")
    if bool(i.client_cert_file) != bool(i.client_key_file):
        problems.append(f"{key}.client_key_file: set together with client_cert_file")
    for name, number in (
        ("timeout_seconds", i.timeout_seconds),
        ("cache_ttl_seconds", i.cache_ttl_seconds),
    ):
        if number <= 0:
            problems.append(f"{key}.{name}: must be greater than 0")
    if i.negative_cache_ttl_seconds < 0 or i.cache_size < 0:
        problems.append(f"{key}: cache sizes and times must be 0 or more")
    return problems

"""Typed settings: one YAML file, every key overridable by CERTBOUND_* environment variables.

Validation collects every problem with its key path, so an operator fixes them in one go
(unknown keys are errors: a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
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
KNOWN_ALGORITHMS = frozenset(
    {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = "0.0.0.0"  # noqa: S104 - a sidecar listens on the pod IP
    port: int = 8443
    workers: int = 1  # 0: one per usable CPU


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = "http://127.0.0.1:8080"
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0
    max_connections: int = 100


@dataclass(frozen=True, slots=True)
class TokenSettings:
    issuer: str = ""
    audience: str = ""
    jwks_uri: str = ""
    jwks_file: str = ""
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    leeway_seconds: int = 30
    require_typ_at_jwt: bool = False
    jwks_refresh_seconds: float = 300.0
    jwks_min_refetch_seconds: float = 30.0
    cache_size: int = 10000


@dataclass(frozen=True, slots=True)
class AdminSettings:
    host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet on the pod IP
    port: int = 9090


@dataclass(frozen=True, slots=True)
class ForwardingSettings:
    client_cert_header: bool = False


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
    if not problems:
        problems.extend(validate(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> None:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(keys) != 2 or not all(keys):
            problems.append(f"{name}: expected {ENV_PREFIX}SECTION__KEY")
            continue
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        section = raw.setdefault(keys[0], {})
        if isinstance(section, dict):
            section[keys[1]] = parsed
        else:
            problems.append(f"{'.'.join(keys)}: section {keys[0]} is not a mapping")


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
    if s.listen.workers < 0 or s.listen.workers > 64:
        problems.append(f"listen.workers: must be 0 (one per CPU) to 64, got {s.listen.workers}")
    if s.listen.workers != 1 and (s.listen.port == 0 or s.admin.port == 0):
        problems.append("listen.workers: several workers need fixed listen.port and admin.port")
    if s.listen.port == s.admin.port and s.listen.port != 0:
        problems.append("admin.port: must differ from listen.port (metrics never on mTLS port)")
    readable("tls.cert_file", s.tls.cert_file)
    readable("tls.key_file", s.tls.key_file)
    readable("tls.client_ca_file", s.tls.client_ca_file)
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

    t = s.tokens
    if not t.issuer:
        problems.append("tokens.issuer: required")
    if not t.audience:
        problems.append("tokens.audience: required")
    if t.jwks_uri and t.jwks_file:
        problems.append("tokens.jwks_uri: set either jwks_uri or jwks_file, not both")
    for key, value in (("tokens.jwks_uri", t.jwks_uri), ("tokens.issuer", t.issuer)):
        if value and urlsplit(value).scheme not in ("http", "https"):
            problems.append(f"{key}: must be an http(s) URL, got {value!r}")
    if t.jwks_file:
        readable("tokens.jwks_file", t.jwks_file)
    if not t.algorithms:
        problems.append("tokens.algorithms: at least one algorithm is required")
    for alg in t.algorithms:
        if alg.lower() == "none":
            problems.append('tokens.algorithms: "none" is never allowed (unsigned tokens)')
        elif alg not in KNOWN_ALGORITHMS:
            problems.append(
                f"tokens.algorithms: unknown algorithm {alg!r} "
                f"(known: {', '.join(sorted(KNOWN_ALGORITHMS))})"
            )
    if t.leeway_seconds < 0 or t.leeway_seconds > 300:
        problems.append(f"tokens.leeway_seconds: must be 0..300, got {t.leeway_seconds}")
    positive("tokens.jwks_refresh_seconds", t.jwks_refresh_seconds)
    if t.jwks_min_refetch_seconds < 0:
        problems.append("tokens.jwks_min_refetch_seconds: must be 0 or more")
    if t.cache_size < 0:
        problems.append("tokens.cache_size: must be 0 (off) or more")
    if s.log.level.lower() not in ("debug", "info", "warning", "error"):
        problems.append(f"log.level: one of debug, info, warning, error; got {s.log.level!r}")
    return problems


def settings_as_dict(s: Settings) -> dict[str, Any]:
    return dataclasses.asdict(s)

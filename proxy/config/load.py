"""Read the configuration: one YAML file, every key overridable by CERTBOUND_* environment
variables, built into the typed settings and validated (unknown keys are errors: a typo must not
silently fall back to a default). Every problem is collected with its key path."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.config.validate import validate
from proxy.settings import INHERITED_ISSUER_KEYS, Settings

ENV_PREFIX = "CERTBOUND_"


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

"""RFC 6902 JSON Patch from a before/after pair of JSON values; pure.

Appended list items become `add .../-` so that a patch stays small and composes with other
webhooks; any other list change replaces the list."""

from __future__ import annotations

from typing import Any


def pointer(parts: list[str]) -> str:
    """RFC 6901: `~` is `~0` and `/` is `~1` (annotation keys like `certbound.io/config`)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def make_patch(before: Any, after: Any) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    _diff(before, after, [], ops)
    return ops


def _diff(before: Any, after: Any, path: list[str], ops: list[dict[str, Any]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": pointer([*path, key])})
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": pointer([*path, key]), "value": value})
            else:
                _diff(before[key], value, [*path, key], ops)
        return
    if isinstance(before, list) and isinstance(after, list) and after[: len(before)] == before:
        for item in after[len(before) :]:
            ops.append({"op": "add", "path": pointer([*path, "-"]), "value": item})
        return
    if before != after or type(before) is not type(after):
        ops.append({"op": "replace", "path": pointer(path), "value": after})

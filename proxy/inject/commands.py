"""The I/O edges of `certbound kube-inject` and `certbound injector`: files, streams, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from proxy.inject.manifests import inject_objects
from proxy.inject.spec import ValuesError, options_from_values

PREFIX = "certbound: kube-inject:"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the config annotation, scripts) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not value.startswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_all(objects: list[Any]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=1 << 16)


def _read_yaml_stream(text: str, name: str) -> list[Any]:
    """Every document; Helm's empty documents and `# Source:` comments disappear here."""
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{name}: not valid YAML{where}: {problem}") from None


def kube_inject(
    filename: str,
    values_file: str | None,
    *,
    inject_all: bool,
    move_services: bool,
    strict: bool = False,
    mode: str | None,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Read, transform, write; on any error print one line per problem, write nothing, exit 2.
    Warnings are printed and the output written (exit 0), unless `strict`: then exit 2."""
    try:
        values: dict[str, Any] = {}
        if values_file:
            loaded = yaml.safe_load(Path(values_file).read_text(encoding="utf-8"))
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(f"{values_file}: the top level must be a mapping")
            values = loaded or {}
        if mode:
            values = {**values, "inject": {**(values.get("inject") or {}), "mode": mode}}
        options = options_from_values(values)
        text = stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
        objects = _read_yaml_stream(text, "stdin" if filename == "-" else filename)
    except ValuesError as exc:
        for problem in exc.problems:
            print(f"{PREFIX} {values_file}: {problem}", file=stderr)
        return 2
    except OSError as exc:
        print(f"{PREFIX} cannot read {exc.filename}: {exc.strerror}", file=stderr)
        return 2
    except (ValueError, yaml.YAMLError) as exc:
        print(f"{PREFIX} {exc}", file=stderr)
        return 2
    result = inject_objects(objects, options, inject_all=inject_all, move_services=move_services)
    for error in result.errors:
        print(f"{PREFIX} {error}", file=stderr)
    if result.errors:
        return 2
    for note in result.notes:
        print(f"{PREFIX} {note}", file=stderr)
    if strict and result.warnings:
        print(f"{PREFIX} --strict: {len(result.warnings)} warning(s), nothing written", file=stderr)
        return 2
    stdout.write(dump_all([o for o in result.objects if o is not None]))
    return 0


def injector(config: str) -> int:
    from proxy.inject.webhook import InjectorConfigError, load_injector_settings, serve

    # One line per decision on stderr, where kubectl logs reads it; aiohttp's own are quiet.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)

    try:
        settings = load_injector_settings(config)
    except InjectorConfigError as exc:
        print(f"certbound: invalid injector configuration in {config}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except (OSError, ValueError) as exc:  # port in use, unreadable or mismatched certificate
        print(f"certbound: injector cannot start: {exc}", file=sys.stderr)
        return 1
    return 0

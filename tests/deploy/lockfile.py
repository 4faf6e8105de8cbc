"""Read a hash-locked requirements file (scripts/lock.sh's output) into its pins."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

from .conftest import REPO

RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
IMAGE_TOOLS_LOCK = REPO / "requirements" / "image-tools.txt"

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)"
    r"(?:\s*;\s*(?P<marker>.+?))?\s*\\?$"
)


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503) name
    version: str
    marker: str | None
    hashes: tuple[str, ...]

    def applies_here(self) -> bool:
        """True when the marker holds for this interpreter (Linux, CPython 3.11, like the image)."""
        return self.marker is None or Marker(self.marker).evaluate()


def read_pins(path: Path) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    current: dict[str, str | None] | None = None
    hashes: list[str] = []

    def flush() -> None:
        if current is not None:
            name = str(current["name"])
            pins[name] = Pin(name, str(current["version"]), current["marker"], tuple(hashes))

    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash="):
            hashes.append(stripped.removeprefix("--hash=").rstrip(" \\"))
            continue
        match = _PIN.match(stripped)
        assert match, f"{path.name}: not a pin: {line!r}"
        flush()
        current = {
            "name": canonicalize_name(match["name"]),
            "version": match["version"],
            "marker": match["marker"],
        }
        hashes = []
    flush()
    return pins

"""The hash-locked requirements: requirements/runtime.txt pins every runtime dependency of
pyproject.toml inside its range, with hashes, and this venv (made by scripts/test.sh) runs
exactly those pins; requirements/image-tools.txt pins the builder stage's tools."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import REPO
from .lockfile import IMAGE_TOOLS_LOCK, RUNTIME_LOCK, read_pins

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(specs: list[str]) -> list[Requirement]:
    return [Requirement(s) for s in specs]


def test_every_runtime_dependency_is_pinned_inside_its_pyproject_range() -> None:
    pins = read_pins(RUNTIME_LOCK)
    for requirement in _requirements(PYPROJECT["project"]["dependencies"]):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {RUNTIME_LOCK.name}: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{name}=={pins[name].version} is outside {requirement}: run scripts/lock.sh"
        )


def test_every_pin_carries_sha256_hashes() -> None:
    for lock in (RUNTIME_LOCK, IMAGE_TOOLS_LOCK):
        for pin in read_pins(lock).values():
            assert pin.hashes, f"{lock.name}: {pin.name} has no hash"
            assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in pin.hashes)


def test_image_tools_lock_holds_the_build_backend_and_the_sbom_generator() -> None:
    pins = read_pins(IMAGE_TOOLS_LOCK)
    for requirement in _requirements(PYPROJECT["build-system"]["requires"]):
        name = canonicalize_name(requirement.name)
        assert requirement.specifier.contains(pins[name].version), f"{name} in image-tools.txt"
    assert "cyclonedx-bom" in pins
    # The tools stay in the builder stage; none of them may leak into the runtime lock.
    assert not {"setuptools", "cyclonedx-bom", "pip"} & set(read_pins(RUNTIME_LOCK))


def test_this_venv_runs_exactly_the_locked_runtime_versions() -> None:
    """scripts/test.sh installs requirements/runtime.txt first and the test tools under it."""
    for pin in read_pins(RUNTIME_LOCK).values():
        if pin.applies_here():
            assert metadata.version(pin.name) == pin.version, (
                f"{pin.name}: venv has {metadata.version(pin.name)}, lock has {pin.version}"
            )

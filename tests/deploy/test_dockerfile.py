"""Dockerfile, read as text: hadolint, the image's promises (non-root, ports,
entrypoint, read-only root filesystem) and the builder's hash-checked installs.
tests/deploy/test_image.py builds and runs it for real."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

from .conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
IMAGE_VENV = "/opt/certbound"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _stages() -> list[list[Instruction]]:
    """Dockerfile -> instructions per stage (continuation lines joined, comments dropped)."""
    stages: list[list[Instruction]] = [[]]
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        logical += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        keyword, _, args = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return [s for s in stages if s and s[0].keyword == "FROM"]


def _final() -> list[Instruction]:
    return _stages()[-1]


def _one(stage: list[Instruction], keyword: str) -> str:
    found = [i.args for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, got {found}"
    return found[0]


def test_hadolint_reports_nothing(hadolint: str) -> None:
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_and_copies_only_the_venv() -> None:
    stages = _stages()
    assert len(stages) == 2
    assert stages[0][0].args.endswith("AS builder")
    copies = [i.args for i in _final() if i.keyword == "COPY"]
    assert copies == [f"--from=builder {IMAGE_VENV} {IMAGE_VENV}"]
    final_runs = " ".join(i.args for i in _final() if i.keyword == "RUN")
    for installer in ("apt-get", "apt ", "pip install", "gcc", "build-essential"):
        assert installer not in final_runs


def test_image_runs_as_numeric_non_root_user() -> None:
    user = _one(_final(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000
    assert not gid or gid.isdigit()


def test_image_entrypoint_cmd_and_ports_follow_the_contract() -> None:
    final = _final()
    assert json.loads(_one(final, "ENTRYPOINT")) == ["certbound"]
    assert json.loads(_one(final, "CMD")) == ["run", "--config", "/etc/certbound/config.yaml"]
    assert _one(final, "EXPOSE").split() == ["8443", "9090"]


def test_image_is_ready_for_a_read_only_root_filesystem() -> None:
    env = " ".join(i.args for i in _final() if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "TMPDIR=/tmp" in env and "HOME=/tmp" in env
    if "PROMETHEUS_MULTIPROC_DIR" in env:
        assert re.search(r"PROMETHEUS_MULTIPROC_DIR=/tmp(/|\s|$)", env)


def test_builder_installs_only_hash_checked_wheels_from_the_locks() -> None:
    builder = _stages()[0]
    copied = " ".join(i.args for i in builder if i.keyword == "COPY")
    assert "requirements/runtime.txt" in copied and "requirements/image-tools.txt" in copied
    installs = [
        part.strip()
        for i in builder
        if i.keyword == "RUN"
        for part in i.args.split("&&")
        if "pip install" in part
    ]
    assert len(installs) == 3, installs
    for install in installs:
        if " -r " in install:
            assert "--require-hashes" in install and "--only-binary=:all:" in install, install
        else:
            # certbound's own wheel, built just before: nothing fetched, nothing added.
            assert "--no-deps" in install and "--no-index" in install, install


def test_final_image_gets_labels_for_version_and_revision() -> None:
    labels = " ".join(i.args for i in _final() if i.keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${REVISION}"' in labels

"""Dockerfile: hadolint, the image's promises (non-root, ports, entrypoint,
read-only root filesystem), and the builder stage's own RUN lines executed in a
fresh venv, since no container engine exists here."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO
from .pki import write_pki

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
    for build_tool in ("apt-get", "pip ", "gcc", "build-essential"):
        assert build_tool not in final_runs


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


def _builder_context(dest: Path) -> None:
    """Copy what the builder stage COPYs, honouring .dockerignore, into dest."""
    ignore = [
        p
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def excluded(rel: str) -> bool:
        verdict = False
        for pattern in ignore:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            pat = pat.rstrip("/")
            if (
                fnmatch.fnmatch(rel, pat)
                or fnmatch.fnmatch(rel.split("/")[0], pat)
                or (pat.startswith("**/") and fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pat[3:]))
            ):
                verdict = not negate
        return verdict

    for instr in _stages()[0]:
        if instr.keyword != "COPY":
            continue
        *sources, target = shlex.split(instr.args)
        for source in sources:
            src = REPO / source
            assert src.exists(), f"COPY {source}: missing from the repo"
            assert not excluded(source), f"COPY {source}: excluded by .dockerignore"
            out = dest / target / (src.name if target.endswith("/") or target == "./" else "")
            if src.is_dir():
                shutil.copytree(src, dest / target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)


@pytest.mark.timeout(900)
def test_builder_stage_commands_install_a_working_certbound(tmp_path: Path) -> None:
    """The builder's RUN lines, verbatim except for the venv path, in a fresh venv."""
    context = tmp_path / "src"
    context.mkdir()
    _builder_context(context)
    venv = tmp_path / "venv"
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # `python` in the image is the base interpreter; here it is this test's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.pop("VIRTUAL_ENV", None)
    for instr in _stages()[0]:
        if instr.keyword != "RUN":
            continue
        command = instr.args.replace(IMAGE_VENV, str(venv))
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=800,
            check=False,
        )
        assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"

    certbound = venv / "bin" / "certbound"
    assert not (venv / "bin" / "pip").exists(), "pip must not ship in the final venv"
    run_env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    help_out = subprocess.run(
        [certbound, "--help"], capture_output=True, text=True, env=run_env, timeout=60, check=False
    )
    assert help_out.returncode == 0, help_out.stderr
    for command in ("run", "check-config", "thumbprint"):
        assert command in help_out.stdout

    pki = write_pki(tmp_path / "tls")
    config = tmp_path / "config.yaml"
    config.write_text(
        "tls:\n"
        f"  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"  client_ca_file: {pki.ca_cert}\n"
        "upstream:\n  url: http://127.0.0.1:8080\n"
        "tokens:\n  issuer: https://issuer.example.org\n  audience: api\n"
        "  jwks_uri: https://issuer.example.org/jwks\n"
    )
    ok = subprocess.run(
        [certbound, "check-config", str(config)],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "config OK" in ok.stdout

    config.write_text(config.read_text().replace("audience: api", "audience: ''"))
    bad = subprocess.run(
        [certbound, "check-config", str(config)],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "tokens.audience" in bad.stdout + bad.stderr

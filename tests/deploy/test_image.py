"""The container image, built and run for real: scripts/image.sh builds the Dockerfile with
podman on a base made from Debian packages (no registry needed), then the container's promises
are checked from outside: labels, SBOM, no pip or compiler, the demo, check-config on the chart's
config, and the chart's sidecar shape in a podman pod with an echo workload."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pip
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from packaging.utils import canonicalize_name

from .conftest import REPO, RenderFn, find
from .lockfile import RUNTIME_LOCK, read_pins
from .pki import ThrowawayPKI, write_pki

# Building is most of the module's time: a cold build (base image + dependencies) takes a few
# minutes on a loaded machine; later runs reuse the cached base and layers.
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow, pytest.mark.e2e]

IMAGE_UID = 10001
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "scripts" / "containers.conf")}
ISSUER = "https://issuer.certbound.test"
AUDIENCE = "payments-api"
# The summary line scripts/image.sh prints last.
SUMMARY = re.compile(
    r"^image (?P<tag>\S+): (?P<mb>[\d.]+) MB, built in (?P<seconds>\d+) s,"
    r" version (?P<version>\S+), revision (?P<revision>\S+), SBOM: (?P<packages>\d+) packages$"
)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    summary: re.Match[str]


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=PODMAN_ENV,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def image() -> Iterator[BuiltImage]:
    for tool in ("podman", "runc", "mmdebstrap", "catatonit"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not found: scripts/test.sh installs it", pytrace=False)
    # A tag of its own: other checkouts on this machine may build at the same time.
    tag = f"localhost/certbound:test-{uuid.uuid4().hex[:12]}"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "image.sh"), "build", tag],
        capture_output=True,
        text=True,
        env=PODMAN_ENV,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-8000:]
    summary = SUMMARY.match(result.stdout.strip().splitlines()[-1])
    assert summary, result.stdout
    yield BuiltImage(tag, summary)
    podman("rmi", "--force", tag, check=False)


def test_image_size_build_time_and_sbom_count_are_reported(
    image: BuiltImage, capsys: pytest.CaptureFixture[str]
) -> None:
    assert image.summary["tag"] == image.tag
    size = podman("image", "inspect", "--format", "{{.Size}}", image.tag).stdout.strip()
    assert float(image.summary["mb"]) == pytest.approx(int(size) / 1e6, abs=0.1)
    with capsys.disabled():
        print(f"\n{image.summary.group(0)}")


def test_labels_name_the_version_and_the_git_revision(image: BuiltImage) -> None:
    labels = json.loads(
        podman("image", "inspect", "--format", "{{json .Labels}}", image.tag).stdout
    )
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    # "-dirty" when built from uncommitted changes: then the image is not that commit.
    assert labels["org.opencontainers.image.revision"] in (head, f"{head}-dirty")


def test_sbom_lists_exactly_the_locked_runtime_packages(image: BuiltImage) -> None:
    sbom = json.loads(
        podman(
            "run", "--rm", "--network", "none", "--no-healthcheck", "--entrypoint", "cat",
            image.tag, "/opt/certbound/sbom.cdx.json",
        ).stdout
    )  # fmt: skip
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == "certbound"
    installed = {canonicalize_name(c["name"]): c["version"] for c in sbom["components"]}
    locked = {p.name: p.version for p in read_pins(RUNTIME_LOCK).values() if p.applies_here()}
    assert installed == locked
    assert int(image.summary["packages"]) == len(installed)


def test_a_release_file_that_does_not_match_the_lock_fails_the_build(
    image: BuiltImage, tmp_path: Path
) -> None:
    """The same script on a copy of the build context whose lock has other hashes for idna:
    pip refuses the real release file, so the build stops before anything is installed."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(REPO / "requirements", context / "requirements")
    shutil.copytree(REPO / "proxy", context / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    lock = context / "requirements" / "runtime.txt"
    idna = read_pins(RUNTIME_LOCK)["idna"]
    text = lock.read_text()
    for digest in idna.hashes:
        text = text.replace(digest, "sha256:" + "0" * 64)
    lock.write_text(text)

    tag = f"localhost/certbound:tampered-{uuid.uuid4().hex[:12]}"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "image.sh"), "build", tag],
        capture_output=True,
        text=True,
        env={**PODMAN_ENV, "CONTEXT": str(context)},
        timeout=300,
        check=False,
    )
    podman("rmi", "--force", tag, check=False)
    assert result.returncode != 0
    assert "DO NOT MATCH THE HASHES" in result.stderr
    assert re.search(r"idna==" + re.escape(idna.version), result.stderr)


def test_no_pip_or_compiler_is_left_and_pip_check_passes_inside(image: BuiltImage) -> None:
    # As root (read-only still) so that find reads every folder; executables only for compilers,
    # since libgcc's base package leaves /usr/share/gcc behind, and that compiles nothing.
    found = podman(
        "run", "--rm", "--network", "none", "--no-healthcheck", "--read-only", "--user", "0:0",
        "--entrypoint", "find", image.tag, "/", "-xdev",
        "(", "-name", "pip", "-o", "-name", "pip[0-9]*", "-o", "-name", "pip-*", ")", "-print",
        "-o", "(", "-type", "f", "-o", "-type", "l", ")", "-perm", "/111",
        "(", "-name", "gcc", "-o", "-name", "gcc-[0-9]*", "-o", "-name", "cc", "-o", "-name", "cc1",
        "-o", "-name", "*-linux-gnu-gcc*", "-o", "-name", "clang*", "-o", "-name", "c++",
        "-o", "-name", "g++*", "-o", "-name", "tcc", ")", "-print",
    ).stdout  # fmt: skip
    assert found == ""
    # pip check needs pip: this venv's, mounted read-only for the one command and gone after.
    pip_dir = Path(pip.__file__).parent
    check = podman(
        "run", "--rm", "--network", "none", "--no-healthcheck", "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{pip_dir}:/pipcheck/pip:ro", "--env", "PYTHONPATH=/pipcheck",
        "--env", "PIP_DISABLE_PIP_VERSION_CHECK=1", "--entrypoint", "python",
        image.tag, "-m", "pip", "check",
    )  # fmt: skip
    assert "No broken requirements found." in check.stdout


def _curl(
    curl: str, url: str, *, ca: Path, cert: Path, key: Path, token: str | None = None
) -> tuple[int, str, str]:
    """One request through curl with a client certificate: (status, head, body)."""
    args = [curl, "-sS", "--max-time", "10", "--cacert", str(ca), "--cert", str(cert)]
    args += ["--key", str(key), "-D", "-", "-w", "\n%{http_code}"]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    head_and_body, _, code = result.stdout.rpartition("\n")
    head, _, body = head_and_body.partition("\n\n")
    return int(code), head, body


def _wait_for_log(container: str, pattern: str, deadline_s: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        logs = podman("logs", container, check=False)
        match = re.search(pattern, logs.stdout + logs.stderr)
        if match:
            return match
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False)
        if state.stdout.strip() not in ("running", "created", "configured"):
            pytest.fail(f"{container} is {state.stdout.strip()}:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.3)
    pytest.fail(f"{container}: no {pattern!r} in its log within {deadline_s} s")


def _process_uid(container: str) -> int:
    """The real uid of the container's main process (pid 1: certbound, no init in between)."""
    status = podman("exec", container, "cat", "/proc/1/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(uid_line.split()[1])


def _read_only_root_is_enforced(container: str) -> None:
    probe = podman("exec", container, "touch", "/opt/certbound/probe", check=False)
    assert probe.returncode != 0
    assert "Read-only file system" in probe.stderr


def test_demo_in_the_container_answers_alice_200_and_bob_401_as_uid_10001(
    image: BuiltImage, curl: str, tmp_path: Path
) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    demo.chmod(0o777)  # the demo writes its throwaway PKI here as uid 10001
    name = f"certbound-demo-{uuid.uuid4().hex[:12]}"
    # Host network, ports picked by the kernel: curl on the host reaches the demo's loopback.
    podman(
        "run", "--detach", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--health-interval", "disable", "--volume", f"{demo}:/demo", image.tag,
        "demo", "--dir", "/demo", "--port", "0", "--admin-port", "0",
    )  # fmt: skip
    try:
        port = _wait_for_log(name, r"mTLS on https://localhost:(\d+)")[1]
        url = f"https://localhost:{port}/hello"
        token = (demo / "alice.token").read_text().strip()

        def as_(who: str) -> tuple[int, str, str]:
            return _curl(
                curl, url, ca=demo / "ca.pem", cert=demo / f"{who}.pem", key=demo / f"{who}.key",
                token=token,
            )  # fmt: skip

        code, _, body = as_("alice")
        assert code == 200, body
        identity = {k.lower(): v for k, v in json.loads(body)["identity"].items()}
        assert identity["x-certbound-subject"] == "alice"
        code, head, _ = as_("bob")
        assert code == 401
        assert 'error="invalid_token"' in head

        assert _process_uid(name) == IMAGE_UID
        assert (demo / "alice.token").stat().st_uid == IMAGE_UID
        _read_only_root_is_enforced(name)
    finally:
        podman("rm", "--force", "--time", "2", name, check=False)


def _chart_tls(directory: Path) -> tuple[Path, ThrowawayPKI]:
    """The chart's TLS Secret as the kubelet mounts it: tls.crt, tls.key, ca.crt, mode 0440
    (defaultMode 288), group 10001 (the pod's fsGroup)."""
    pki = write_pki(directory / "pki")
    tls = directory / "tls"
    tls.mkdir()
    for source, target in ((pki.server_cert, "tls.crt"), (pki.server_key, "tls.key")):
        shutil.copy(source, tls / target)
    shutil.copy(pki.ca_cert, tls / "ca.crt")
    for f in tls.iterdir():
        os.chown(f, 0, IMAGE_UID)
        f.chmod(0o440)
    tls.chmod(0o755)
    return tls, pki


def _render_chart(render: RenderFn, jwks_uri: str, *sets: str) -> list[dict[str, Any]]:
    return render(
        sets=[
            f"proxy.config.tokens.issuer={ISSUER}",
            f"proxy.config.tokens.audience={AUDIENCE}",
            f"proxy.config.tokens.jwks_uri={jwks_uri}",
            "proxy.config.tokens.algorithms={ES256}",
            *sets,
        ]
    )


def _write_config(docs: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(find(docs, "ConfigMap")["data"]["config.yaml"])
    path.chmod(0o644)
    return path


def _check_config(image: BuiltImage, config: Path, tls: Path) -> subprocess.CompletedProcess[str]:
    return podman(
        "run", "--rm", "--network", "none", "--no-healthcheck", "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{config}:/etc/certbound/config.yaml:ro",
        "--volume", f"{tls}:/etc/certbound/tls:ro",
        image.tag, "check-config", "/etc/certbound/config.yaml",
        check=False,
    )  # fmt: skip


def test_check_config_accepts_the_charts_rendered_config_and_refuses_a_broken_one(
    image: BuiltImage, render: RenderFn, tmp_path: Path
) -> None:
    tls, _ = _chart_tls(tmp_path)
    docs = _render_chart(render, "http://127.0.0.1:8081/jwks.json")
    ok = _check_config(image, _write_config(docs, tmp_path / "config.yaml"), tls)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "config OK" in ok.stdout

    # The chart's schema refuses an empty audience; a hand-edited file gets past it.
    broken = yaml.safe_load(find(docs, "ConfigMap")["data"]["config.yaml"])
    broken["tokens"]["audience"] = ""
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    (tmp_path / "broken.yaml").chmod(0o644)
    bad = _check_config(image, tmp_path / "broken.yaml", tls)
    assert bad.returncode == 2
    assert "tokens.audience" in bad.stdout + bad.stderr


def _podman_shape(
    pod_spec: dict[str, Any], container: dict[str, Any], files: dict[str, Path]
) -> list[str]:
    """The rendered container's securityContext, limits and mounts as `podman run` flags.
    `files` maps a ConfigMap or Secret volume name to the host file or folder standing in for it."""
    security = {**pod_spec.get("securityContext", {}), **container["securityContext"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    flags = ["--read-only", "--security-opt", "no-new-privileges", "--cap-drop", "all"]
    flags += ["--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    memory = container["resources"]["limits"]["memory"]
    assert memory.endswith("Mi")
    flags += ["--memory", f"{memory.removesuffix('Mi')}m"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            flags += ["--tmpfs", mount["mountPath"]]
        else:
            assert mount.get("readOnly") is True, mount
            flags += ["--volume", f"{files[mount['name']]}:{mount['mountPath']}:ro"]
    return flags


def _wait_ready(admin: str, container: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False)
        if state.stdout.strip() != "running":
            logs = podman("logs", container, check=False)
            pytest.fail(f"{container} is {state.stdout.strip()}:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.3)
    pytest.fail(f"{container} did not become ready (/readyz) within {deadline_s} s")


def _bound_token(pki: ThrowawayPKI, signing_key: ec.EllipticCurvePrivateKey) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "shop-frontend",
        "scope": "payments:read", "iat": now, "nbf": now, "exp": now + 300, "jti": "pod-1",
        "cnf": {"x5t#S256": pki.client_thumbprint},
    }  # fmt: skip
    return jwt.encode(claims, signing_key, algorithm="ES256", headers={"kid": "pod-key"})


def test_sidecar_pod_forwards_a_bound_token_to_the_echo_workload(
    image: BuiltImage, render: RenderFn, curl: str, tmp_path: Path
) -> None:
    tls, pki = _chart_tls(tmp_path)
    signing_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="pod-key", alg="ES256", use="sig")
    jwks = tmp_path / "issuer"
    jwks.mkdir(mode=0o755)
    (jwks / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (jwks / "jwks.json").chmod(0o644)

    # The issuer stands in the pod too (its JWKS on loopback), so nothing leaves the pod.
    docs = _render_chart(render, "http://127.0.0.1:8081/jwks.json")
    config = _write_config(docs, tmp_path / "config.yaml")
    workload_port = yaml.safe_load(config.read_text())["upstream"]["url"].rsplit(":", 1)[1]
    pod_spec = find(docs, "Deployment")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod_spec["containers"]}
    sidecar, workload = containers["certbound"], containers["workload"]
    files = {"certbound-config": config, "certbound-tls": tls}
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}

    pod = f"certbound-pod-{uuid.uuid4().hex[:12]}"
    podman(
        "pod", "create", "--name", pod,
        "--publish", f"127.0.0.1::{ports['mtls']}", "--publish", f"127.0.0.1::{ports['admin']}",
    )  # fmt: skip
    try:
        podman(
            "run", "--detach", "--pod", pod, "--name", f"{pod}-workload", "--no-healthcheck",
            *_podman_shape(pod_spec, workload, files),
            "--volume", f"{REPO / 'tests' / 'deploy' / 'echo_workload.py'}:/workload/echo.py:ro",
            "--entrypoint", "python", image.tag, "/workload/echo.py", workload_port,
        )  # fmt: skip
        podman(
            "run", "--detach", "--pod", pod, "--name", f"{pod}-issuer", "--no-healthcheck",
            "--read-only", "--cap-drop", "all", "--volume", f"{jwks}:/issuer:ro",
            "--entrypoint", "python", image.tag,
            "-m", "http.server", "8081", "--bind", "127.0.0.1", "--directory", "/issuer",
        )  # fmt: skip
        certbound = f"{pod}-certbound"
        podman(
            "run", "--detach", "--pod", pod, "--name", certbound, "--health-interval", "disable",
            *_podman_shape(pod_spec, sidecar, files), image.tag, *sidecar["args"],
        )  # fmt: skip
        mtls = podman("port", certbound, f"{ports['mtls']}/tcp").stdout.strip()
        admin = podman("port", certbound, f"{ports['admin']}/tcp").stdout.strip()
        _wait_ready(admin, certbound)

        url = f"https://localhost:{mtls.rsplit(':', 1)[1]}/orders?id=7"
        client = {"ca": pki.ca_cert, "cert": pki.client_cert, "key": pki.client_key}
        code, _, body = _curl(curl, url, token=_bound_token(pki, signing_key), **client)
        assert code == 200, body
        seen = json.loads(body)
        assert (seen["workload"], seen["path"]) == ("echo", "/orders?id=7")
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert headers["x-certbound-thumbprint"] == pki.client_thumbprint
        assert headers["x-certbound-subject"] == "alice"

        code, head, _ = _curl(curl, url, **client)
        assert code == 401
        assert "www-authenticate: bearer" in head.lower()

        # The image's own HEALTHCHECK, run once by podman inside the sidecar.
        health = podman("healthcheck", "run", certbound, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        assert _process_uid(certbound) == IMAGE_UID
        _read_only_root_is_enforced(certbound)
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'certbound_requests_total{issuer="0",outcome="forwarded",reason="ok"} 1.0' in metrics
    finally:
        logs = podman("logs", f"{pod}-certbound", check=False)
        print("certbound log:\n" + logs.stdout + logs.stderr)  # shown only when the test fails
        podman("pod", "rm", "--force", "--time", "2", pod, check=False)

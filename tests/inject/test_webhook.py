"""`certbound injector` as a real process over real TLS on loopback: its JSONPatch, applied
with the jsonpatch library, gives the pod kube-inject writes; hostile reviews get an
AdmissionReview answer, never a 500."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from proxy.inject.spec import options_from_values
from proxy.inject.webhook import review
from proxy.tools.pki import issue, make_ca
from tests.support.process import free_port

from .conftest import (
    MANIFESTS,
    REPO,
    VALUES,
    WORKLOAD_FILES,
    inject_file,
    kube_inject,
    load,
    pod_template,
    sidecar,
)

pytestmark = pytest.mark.e2e


class Injector:
    def __init__(self, port: int, ca_file: Path, log_file: Path) -> None:
        self.log_file = log_file
        self.url = f"https://localhost:{port}"
        self.context = ssl.create_default_context(cafile=str(ca_file))

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def review(self, pod: Any, path: str = "/inject", **request: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": request.pop("uid", "705ab4f5-6393-11e8-b7cc-42010a800002"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod,
                **request,
            },
        }
        status, answer = self.post(path, json.dumps(body).encode())
        assert status == 200, answer
        assert answer["response"]["uid"] == body["request"]["uid"]
        response: dict[str, Any] = answer["response"]
        return response


@pytest.fixture(scope="module")
def injector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Injector]:
    tmp = tmp_path_factory.mktemp("injector")
    ca = make_ca("certbound injector test CA")
    cert, key = issue(ca, "injector", server=True, client=False, dns_names=("localhost",)).write(
        tmp, "injector"
    )
    (tmp / "ca.pem").write_bytes(ca.cert_pem)
    port = free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "tls": {"cert_file": str(cert), "key_file": str(key)},
        "values": yaml.safe_load(VALUES.read_text()),
    }
    (tmp / "injector.yaml").write_text(yaml.safe_dump(config))
    log = (tmp / "injector.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "injector", "--config", str(tmp / "injector.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    server = Injector(port, tmp / "ca.pem", tmp / "injector.log")
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(server.url + "/healthz", context=server.context) as r:
                assert r.status == 200
                break
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("injector did not start:\n" + (tmp / "injector.log").read_text())
            time.sleep(0.2)
    try:
        yield server
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        log.close()


def _pods(name: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, the pod as the API server would see it, the pod kube-inject writes)."""
    out = []
    for before, after in zip(load(name), inject_file(name), strict=True):
        template, injected = pod_template(before), pod_template(after)
        if template is None or injected is None or sidecar(injected) is None:
            continue
        meta = {"namespace": before["metadata"].get("namespace", "default")}
        pod = {"apiVersion": "v1", "kind": "Pod", **template}
        pod["metadata"] = {**meta, **template.get("metadata", {})}
        expected = {"apiVersion": "v1", "kind": "Pod", **injected}
        expected["metadata"] = {**meta, **injected.get("metadata", {})}
        out.append((f"{before['kind']}/{before['metadata']['name']}", pod, expected))
    return out


ALL_PODS = [p for name in WORKLOAD_FILES for p in _pods(name)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "pod", "expected"), ALL_PODS, ids=[p[0] for p in ALL_PODS])
def test_webhook_patch_gives_the_same_pod_as_kube_inject(
    injector: Injector, name: str, pod: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = injector.review(pod)
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(pod, patch)
    assert patched == expected
    # The patch only adds: the workload's own containers are never rewritten.
    assert all(op["op"] == "add" for op in patch), patch


def test_annotation_keys_with_a_slash_are_escaped_in_the_patch(injector: Injector) -> None:
    _, pod, _ = next(p for p in ALL_PODS if p[0] == "Deployment/orders")
    patch = json.loads(base64.b64decode(injector.review(pod)["patch"]))
    paths = [op["path"] for op in patch]
    assert "/metadata/annotations/certbound.io~1config" in paths


def test_pods_that_do_not_ask_are_allowed_unchanged_unless_the_namespace_opts_in(
    injector: Injector,
) -> None:
    pod = {"metadata": {"name": "web"}, "spec": {"containers": [_web()]}}
    assert injector.review(pod) == {"uid": pod_uid(), "allowed": True}
    response = injector.review(pod, path="/inject/namespace")
    assert response["allowed"] is True and "patch" in response
    opted_out = {"metadata": {"name": "web", "labels": {"certbound.io/inject": "false"}}}
    opted_out["spec"] = {"containers": [_web()]}
    assert "patch" not in injector.review(opted_out, path="/inject/namespace")


def _web() -> dict[str, Any]:
    return {"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}


def pod_uid() -> str:
    return "705ab4f5-6393-11e8-b7cc-42010a800002"


def test_an_injected_pod_is_left_alone(injector: Injector) -> None:
    _, _, expected = ALL_PODS[0]
    response = injector.review(expected)
    assert response["allowed"] is True and "patch" not in response
    assert response["warnings"] == ["certbound not added: already has a certbound container"]


def test_a_pod_that_asks_but_cannot_be_injected_is_refused_with_the_reason(
    injector: Injector,
) -> None:
    pod = {
        "metadata": {"generateName": "gateway-", "annotations": {"certbound.io/inject": "true"}},
        "spec": {
            "containers": [
                {
                    "name": "gw",
                    "image": "gw",
                    "ports": [{"containerPort": 8080}, {"containerPort": 8081}],
                }
            ]
        },
    }
    response = injector.review(pod)
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith(
        "certbound cannot be added to Pod shop/gateway-*: declares 2 ports"
    )


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        ({"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}}, True),
        ({"operation": "UPDATE"}, True),
        ({"subResource": "status"}, True),
        ({"object": None}, False),
        ({"object": "a pod"}, False),
    ],
)
def test_reviews_that_are_not_pod_creations_get_a_proper_answer(
    injector: Injector, overrides: dict[str, Any], allowed: bool
) -> None:
    _, pod, _ = ALL_PODS[0]
    response = injector.review(pod, **overrides)
    assert response["allowed"] is allowed
    assert "patch" not in response
    if not allowed:
        assert response["status"]["code"] == 400


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json at all", 400, "the body is not JSON"),
        (b"[" * 200_000 + b"]" * 200_000, 400, "the body is not JSON"),  # nesting bomb
        (b"{}", 400, "request.uid is missing"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', 400, "uid"),
        (b'{"request": {"uid": 7}}', 400, "request.uid is missing"),
        (
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",'
            b' "request": {"uid": "u"}}',
            400,
            "expected kind AdmissionReview, apiVersion admission.k8s.io/v1",
        ),
        (b'{"apiVersion": "v1", "kind": "Pod", "request": {"uid": "u"}}', 400, "expected kind"),
        (b'"just a string"', 400, "request.uid is missing"),
        (b"\xff\xfe\x00garbage", 400, "the body is not JSON"),
        (b"x" * (8 * 1024 * 1024), 413, "larger than"),
    ],
    ids=[
        "not-json",
        "nesting-bomb",
        "empty-object",
        "no-request",
        "uid-not-a-string",
        "v1beta1",
        "wrong-kind",
        "string",
        "binary",
        "huge",
    ],
)
def test_malformed_reviews_get_an_admission_review_error_never_a_500(
    injector: Injector, body: bytes, status: int, message: str
) -> None:
    got, answer = injector.post("/inject", body)
    assert got == status
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["allowed"] is False
    assert message in answer["response"]["status"]["message"]


def test_the_injector_still_serves_after_every_hostile_review(injector: Injector) -> None:
    _, pod, expected = ALL_PODS[0]
    patch = json.loads(base64.b64decode(injector.review(pod)["patch"]))
    assert jsonpatch.apply_patch(pod, patch) == expected
    with pytest.raises(urllib.error.HTTPError) as wrong_method:
        urllib.request.urlopen(injector.url + "/inject", context=injector.context, timeout=10)
    assert wrong_method.value.code == 405


def test_injector_with_a_bad_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("listen: {port: 99999}\nvalues: {proxy: {ports: {mtls: 0}}}\nextra: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "injector", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 2
    for line in (
        "extra: unknown key",
        "listen.port: expected a port number",
        "tls.cert_file: required",
        "values.proxy.ports.mtls: expected a port number",
    ):
        assert line in result.stderr
    assert "Traceback" not in result.stderr


def _corpus_pods() -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(name, the pod as the API server sends it, the pod kube-inject --all writes or None)."""
    out = []
    for path in sorted((MANIFESTS / "corpus").glob("*.yaml")):
        result = kube_inject("-f", str(path), "--values", str(VALUES), "--all")
        assert result.returncode == 0, result.stderr
        after = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
        for before, injected in zip(load(f"corpus/{path.name}"), after, strict=True):
            template, new = pod_template(before), pod_template(injected)
            if template is None or new is None:
                continue
            meta = {"namespace": before["metadata"].get("namespace", "default")}
            if before["kind"] != "Pod":
                meta["generateName"] = before["metadata"]["name"] + "-"
            pod = {"apiVersion": "v1", "kind": "Pod", **template}
            pod["metadata"] = {**meta, **template.get("metadata", {})}
            expected = None
            if sidecar(new) is not None:
                expected = {"apiVersion": "v1", "kind": "Pod", **new}
                expected["metadata"] = {**meta, **new.get("metadata", {})}
            out.append(
                (f"{path.stem}/{before['kind']}/{before['metadata']['name']}", pod, expected)
            )
    return out


CORPUS_PODS = _corpus_pods()


@pytest.mark.parametrize(("name", "pod", "expected"), CORPUS_PODS, ids=[p[0] for p in CORPUS_PODS])
def test_namespace_wide_webhook_agrees_with_kube_inject_all_on_the_corpus(
    injector: Injector, name: str, pod: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    response = injector.review(pod, "/inject/namespace", namespace=pod["metadata"]["namespace"])
    assert response["allowed"] is True, response
    if expected is None:  # skipped by both: created as it is, with the reason
        assert "patch" not in response
        (warning,) = response["warnings"]
        assert warning.startswith("certbound not added: ")
        return
    patch = json.loads(base64.b64decode(response["patch"]))
    assert jsonpatch.apply_patch(pod, patch) == expected


def test_every_decision_is_one_log_line_with_uid_pod_and_reason(injector: Injector) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "log-agent-", "namespace": "shop"},
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
    }
    injector.review(pod, "/inject/namespace", uid="2b0e5a7c-log-line-test")
    status, answer = injector.post("/inject", b'{"request": {"uid": "9f1d-unreadable"}, "kind": 3}')
    assert status == 400 and answer["response"]["uid"] == "9f1d-unreadable"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = injector.log_file.read_text()
        if "9f1d-unreadable" in log:
            break
        time.sleep(0.1)
    lines = log.splitlines()
    (skipped,) = [line for line in lines if "uid=2b0e5a7c-log-line-test" in line]
    assert "pod=shop/log-agent-*" in skipped and "outcome=skipped" in skipped
    assert "declares no container port" in skipped
    assert any("injector listening on 127.0.0.1:" in line for line in lines)
    (unreadable,) = [line for line in lines if "uid=9f1d-unreadable" in line]
    assert "outcome=refused" in unreadable


def test_injector_without_token_settings_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "no-tokens.yaml"
    config.write_text("tls: {cert_file: /c, key_file: /k}\nvalues: {tls: {secretName: s}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "injector", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert "values.proxy.config.tokens: issuer and audience (or issuers) required" in result.stderr


def test_a_jobs_pod_is_skipped_in_container_mode_or_refused_if_it_asked() -> None:
    values = yaml.safe_load(VALUES.read_text()) | {"inject": {"mode": "container"}}
    options = options_from_values(values)
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "reindex",
        "uid": "1",
        "controller": True,
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "reindex-", "ownerReferences": [owner]},
        "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 8080}]}]},
    }
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "search",
            "operation": "CREATE",
            "object": pod,
        },
    }
    _, document, _, _ = review(body, options, inject_all=True)
    assert document["response"]["allowed"] is True and "patch" not in document["response"]
    assert "a Job's pod never completes" in document["response"]["warnings"][0]
    pod["metadata"]["annotations"] = {"certbound.io/inject": "true"}
    _, document, _, _ = review(body, options, inject_all=False)
    assert document["response"]["allowed"] is False
    assert "a Job's pod never completes" in document["response"]["status"]["message"]

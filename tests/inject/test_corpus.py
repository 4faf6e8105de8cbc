"""kube-inject on manifests shaped like public samples (Istio's bookinfo, httpbin, helloworld,
tcp-echo and addons; the guestbook; the Kubernetes docs' StatefulSet, DaemonSet, Job, CronJob;
Traefik's and Kong's examples), opt-in and namespace-wide (--all).

Each Service's endpoints are computed before and after, as the endpoints controller does
(selector, namespace with the default applied, named or numbered targetPort, native sidecars'
ports): no Service loses an endpoint, and no endpoint that reaches a protected port around
certbound is left without a warning naming that Service port."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import K8S_VERSIONS, MANIFESTS, VALUES, kube_inject, load, pod_template, sidecar

CORPUS = sorted(p.name for p in (MANIFESTS / "corpus").glob("*.yaml"))
MODES = {"opt-in": (), "all": ("--all",)}
PREFIX = "certbound: kube-inject: "


def run(name: str, *args: str) -> tuple[list[dict[str, Any]], list[str]]:
    result = kube_inject("-f", str(MANIFESTS / "corpus" / name), "--values", str(VALUES), *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line.removeprefix(PREFIX) for line in result.stderr.splitlines()]
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None], lines


def _namespace(obj: dict[str, Any]) -> str:
    return obj.get("metadata", {}).get("namespace") or "default"


def _find_port(spec: dict[str, Any], port: dict[str, Any]) -> int | None:
    """Kubernetes' FindPort: a number as is, a name among the containers' ports and those of
    init containers with restartPolicy Always, of the Service port's protocol."""
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    protocol = port.get("protocol", "TCP")
    containers = spec["containers"] + [
        c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"
    ]
    for container in containers:
        for p in container.get("ports", []):
            if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                number: int = p["containerPort"]
                return number
    return None


def _workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            yield f"{doc['kind']}/{doc['metadata']['name']}", _namespace(doc), template


def endpoints(docs: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, int]]:
    """(Service, its port) -> {workload: the container port its endpoints reach}."""
    out = {}
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"].get("selector") or {}
        for port in svc["spec"]["ports"]:
            reached = {}
            for where, namespace, template in _workloads(docs):
                labels = template.get("metadata", {}).get("labels", {})
                if not selector or namespace != _namespace(svc):
                    continue
                if all(labels.get(k) == v for k, v in selector.items()):
                    number = _find_port(template["spec"], port)
                    if number is not None:
                        reached[where] = number
            out[(f"{_namespace(svc)}/{svc['metadata']['name']}", port["port"])] = reached
    return out


def protected_ports(docs: list[dict[str, Any]]) -> dict[str, int]:
    """Injected workload -> the workload port its certbound forwards to."""
    out = {}
    for where, _, template in _workloads(docs):
        container = sidecar(template)
        if container is not None:
            env = {e["name"]: e.get("value") for e in container["env"]}
            out[where] = int(env["CERTBOUND_UPSTREAM__URL"].rsplit(":", 1)[1])
    return out


def _service_label(lines: list[str], namespace: str, name: str, port: int) -> list[str]:
    where = f"Service {name}" if namespace == "default" else f"Service {namespace}/{name}"
    return [
        line
        for line in lines
        if line.startswith(f"warning: {where}: port {port} ")
        or line.startswith(f"warning: Service {namespace}/{name}: port {port} ")
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CORPUS)
def test_no_service_loses_an_endpoint_and_no_bypass_goes_unwarned(name: str, mode: str) -> None:
    before = load(f"corpus/{name}")
    after, lines = run(name, *MODES[mode])
    old, new = endpoints(before), endpoints(after)
    assert old.keys() == new.keys()
    protected = protected_ports(after)
    for (service, port), reached in old.items():
        assert new[(service, port)].keys() == reached.keys(), (service, port, lines)
        namespace, svc_name = service.split("/")
        bypass = [w for w, n in new[(service, port)].items() if protected.get(w) == n]
        if bypass:
            assert _service_label(lines, namespace, svc_name, port), (service, port, lines)
        for workload, number in new[(service, port)].items():
            if number != reached[workload]:  # moved: onto certbound, which forwards there
                assert protected[workload] == reached[workload]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CORPUS)
def test_every_corpus_output_is_valid_kubernetes_for_two_versions(name: str, mode: str) -> None:
    docs, _ = run(name, *MODES[mode])
    for doc in docs:
        for version in K8S_VERSIONS["native"]:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on {version}: {exc}")


def _by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_bookinfo_with_one_reviews_version_annotated_keeps_reviews_with_a_warning() -> None:
    docs, lines = run("bookinfo.yaml")
    services = _by_name(docs)
    assert services[("Service", "reviews")]["spec"]["ports"] == [{"port": 9080, "name": "http"}]
    (warning,) = [line for line in lines if line.startswith("warning: Service reviews:")]
    assert "Deployment reviews-v2, Deployment reviews-v3 are not injected on it" in warning
    assert "Deployment reviews-v1 stays reachable around certbound" in warning
    # productpage has one version, and it asked: its Service moves.
    assert services[("Service", "productpage")]["spec"]["ports"][0]["targetPort"] == (
        "certbound-mtls"
    )


def test_strict_turns_the_warning_into_exit_2_and_writes_nothing() -> None:
    result = kube_inject(
        "-f", str(MANIFESTS / "corpus" / "bookinfo.yaml"), "--values", str(VALUES), "--strict"
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "warning: Service reviews: port 9080 left on 9080" in result.stderr
    assert "--strict: 1 warning(s), nothing written" in result.stderr


def test_a_service_without_namespace_moves_with_its_deployment_in_default() -> None:
    docs, lines = run("traefik-kong.yaml")
    whoami = _by_name(docs)[("Service", "whoami")]
    assert "namespace" not in whoami["metadata"]
    assert whoami["spec"]["ports"][0]["targetPort"] == "certbound-mtls"
    assert "Service whoami: port 80 now targets certbound-mtls instead of web" in lines


def test_workloads_with_an_admin_port_or_8443_get_certbound_on_its_own_ports() -> None:
    docs, _ = run("traefik-kong.yaml", "--all")
    for key in (("Deployment", "traefik-deployment"), ("Deployment", "kong-gateway")):
        template = pod_template(_by_name(docs)[key])
        assert template is not None
        container = sidecar(template)
        assert container is not None, key
        assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
            ("certbound-mtls", 17443),
            ("certbound-admin", 17090),
        ]
        assert all(len(p["name"]) <= 15 for p in container["ports"])


def test_pods_with_nothing_to_protect_are_skipped_and_the_stream_goes_on() -> None:
    docs, lines = run("k8s-docs.yaml", "--all")
    skipped = {
        "DaemonSet log-agent": "declares no container port",
        "Job pi": "declares no container port",
        "CronJob hello": "declares no container port",
        "Pod debug": "declares no container port",
        "DaemonSet monitoring/node-exporter": "uses hostNetwork",
        "DaemonSet kube-system/fluentd-elasticsearch": "namespace kube-system",
    }
    for where, why in skipped.items():
        assert any(line.startswith(f"{where}: skipped, {why}") for line in lines), where
    for doc in docs:
        template = pod_template(doc)
        if template is None:
            continue
        assert (sidecar(template) is not None) is (doc["metadata"]["name"] == "web"), doc
    assert not [line for line in lines if line.startswith("warning:")]


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        (
            "spec: {hostNetwork: true, containers: [{name: a, ports: [{containerPort: 80}]}]}",
            "uses hostNetwork",
        ),
        ("spec: {containers: [{name: a}]}", "declares no container port"),
    ],
)
def test_a_pod_that_asked_and_cannot_be_injected_is_refused(pod: str, message: str) -> None:
    stdin = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: "
        '{certbound.io/inject: "true"}}\n' + pod + "\n"
    )
    result = kube_inject("-f", "-", "--values", str(VALUES), stdin=stdin)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{PREFIX}Pod p: {message}" in result.stderr


@pytest.mark.slow
def test_raw_tcp_and_grpc_ports_get_a_warning() -> None:
    _, lines = run("httpbin-helloworld-tcp-echo.yaml", "--all")
    assert any(
        line.startswith("warning: Service tcp-echo: port 9000 (name 'tcp'") for line in lines
    )
    _, lines = run("guestbook.yaml", "--all")  # an unnamed 6379
    assert "warning: Deployment redis-master: port 6379 (Redis's) looks like raw TCP" in "\n".join(
        lines
    )
    _, lines = run("observability.yaml")
    assert any(
        line.startswith("warning: Service istio-system/tracing: port 4317")
        and "appProtocol 'grpc'" in line
        for line in lines
    )


def test_upstream_port_naming_certbounds_own_port_is_refused() -> None:
    stdin = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: "
        '{certbound.io/inject: "true", certbound.io/upstream-port: "17443"}}\n'
        "spec: {containers: [{name: a, ports: [{containerPort: 80}]}]}\n"
    )
    result = kube_inject("-f", "-", "--values", str(VALUES), stdin=stdin)
    assert result.returncode == 2
    assert "certbound.io/upstream-port 17443 is certbound's own mtls port" in result.stderr


def test_per_pod_port_annotations_move_certbound_off_a_colliding_port() -> None:
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: "
        '{certbound.io/inject: "true", certbound.io/upstream-port: "80"%s}}\n'
        "spec: {containers: [{name: a, ports: [{containerPort: 80}, "
        "{containerPort: 17443, name: other}]}]}\n"
    )
    result = kube_inject("-f", "-", "--values", str(VALUES), stdin=pod % "")
    assert result.returncode == 2
    assert "declares port 17443, which is certbound's mtls port" in result.stderr
    moved = ', certbound.io/mtls-port: "18443", certbound.io/admin-port: "18090"'
    result = kube_inject("-f", "-", "--values", str(VALUES), stdin=pod % moved)
    assert result.returncode == 0, result.stderr
    (pod,) = list(yaml.safe_load_all(result.stdout))
    container = sidecar(pod)
    assert container is not None
    assert [p["containerPort"] for p in container["ports"]] == [18443, 18090]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CERTBOUND_LISTEN__PORT"] == "18443" and env["CERTBOUND_ADMIN__PORT"] == "18090"


def test_an_unknown_kind_with_a_pod_template_is_a_warning_under_all() -> None:
    rollout = (
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: canary}\n"
        "spec: {template: {metadata: {labels: {app: c}}, spec: {containers: "
        "[{name: c, ports: [{containerPort: 8080}]}]}}}\n"
    )
    result = kube_inject("-f", "-", "--values", str(VALUES), "--all", stdin=rollout)
    assert result.returncode == 0, result.stderr
    assert f"{PREFIX}warning: Rollout canary: skipped, unknown kind with a pod template" in (
        result.stderr
    )

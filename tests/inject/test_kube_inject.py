"""`certbound kube-inject` run as a process on manifests shaped like legacy teams have."""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import (
    K8S_VERSIONS,
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

CASES = [(name, "native") for name in WORKLOAD_FILES] + [
    (name, "container")
    for name in WORKLOAD_FILES
    if name != "workloads.yaml"  # Jobs: native
]


def _by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_every_output_object_is_valid_kubernetes_for_two_versions(name: str, mode: str) -> None:
    docs = inject_file(name, "--mode", mode)
    assert any(pod_template(d) and sidecar(pod_template(d)) for d in docs)  # type: ignore[arg-type]
    for doc in docs:
        for version in K8S_VERSIONS[mode]:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on {version}: {exc}")


def test_native_sidecar_needs_kubernetes_1_29_which_is_why_container_mode_exists() -> None:
    deployment = _by_name(inject_file("orders.yaml"))[("Deployment", "orders")]
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(deployment, "1.25.0", strict=True)


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_only_pod_templates_change_and_workload_containers_stay_as_they_were(name: str) -> None:
    before, after = load(name), inject_file(name)
    assert [(d["kind"], d["metadata"]["name"]) for d in before] == [
        (d["kind"], d["metadata"]["name"]) for d in after
    ]
    for old, new in zip(before, after, strict=True):
        old_t, new_t = pod_template(old), pod_template(new)
        if new_t is None or sidecar(new_t) is None:
            if old["kind"] != "Service":
                assert new == old, f"{old['kind']} {old['metadata']['name']} changed"
            continue
        assert new_t["spec"]["containers"] == old_t["spec"]["containers"]  # type: ignore[index]
        inits = [c for c in new_t["spec"].get("initContainers", []) if c["name"] != "certbound"]
        assert inits == old_t["spec"].get("initContainers", [])  # type: ignore[index]
        old_volumes = old_t["spec"].get("volumes", [])  # type: ignore[index]
        assert new_t["spec"]["volumes"][: len(old_volumes)] == old_volumes
        # Everything outside the pod template is the object as it was.
        stripped = copy.deepcopy(new)
        node = pod_template(stripped)
        assert node is not None
        node.clear()
        node.update(copy.deepcopy(old_t))  # type: ignore[arg-type]
        assert stripped == old


def test_native_sidecar_is_the_last_init_container_with_restart_policy_always() -> None:
    deployment = _by_name(inject_file("helm-rendered.yaml"))[("Deployment", "payments")]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["migrate", "certbound"]
    assert spec["initContainers"][1]["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["payments", "log-shipper"]


def test_container_mode_appends_a_plain_container() -> None:
    deployment = _by_name(inject_file("helm-rendered.yaml", "--mode", "container"))[
        ("Deployment", "payments")
    ]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["payments", "log-shipper", "certbound"]
    assert "restartPolicy" not in spec["containers"][2]
    assert [c["name"] for c in spec["initContainers"]] == ["migrate"]


def test_sidecar_forwards_to_the_chosen_port_and_reads_the_inline_config() -> None:
    docs = _by_name(inject_file("helm-rendered.yaml") + inject_file("workloads.yaml"))
    expected = {
        ("Deployment", "payments"): 8000,  # annotation names the port "http"
        ("StatefulSet", "ledger"): 5000,  # annotation gives the number
        ("DaemonSet", "node-agent"): 7070,  # the single declared port
        ("Job", "reindex"): 8081,
        ("CronJob", "report"): 8082,
        ("Pod", "debug-api"): 8080,
    }
    for key, port in expected.items():
        template = pod_template(docs[key])
        assert template is not None
        container = sidecar(template)
        assert container is not None, key
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["CERTBOUND_UPSTREAM__URL"] == f"http://127.0.0.1:{port}", key
        assert container["readinessProbe"]["httpGet"] == {
            "path": "/readyz",
            "port": "certbound-admin",
        }
    payments = pod_template(docs[("Deployment", "payments")])
    assert payments is not None
    config = yaml.safe_load(payments["metadata"]["annotations"]["certbound.io/config"])
    assert config["tokens"]["issuer"] == "https://login.example.com"
    assert config["policy"]["routes"] == [{"path": "/health", "public": True}]


@pytest.mark.slow
def test_tls_secret_and_config_map_annotations_win_over_values() -> None:
    pod = _by_name(inject_file("workloads.yaml"))[("Pod", "debug-api")]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["certbound-tls"]["secret"]["secretName"] == "debug-api-mtls"
    assert volumes["certbound-config"] == {
        "name": "certbound-config",
        "configMap": {"name": "debug-api-certbound"},
    }
    assert "certbound.io/config" not in pod["metadata"]["annotations"]
    # The pod has an fsGroup: the chart's 0440 works; without one the key must be 0444.
    assert volumes["certbound-tls"]["secret"]["defaultMode"] == 0o440
    ledger = _by_name(inject_file("workloads.yaml"))[("StatefulSet", "ledger")]
    ledger_volumes = {v["name"]: v for v in ledger["spec"]["template"]["spec"]["volumes"]}
    assert ledger_volumes["certbound-tls"]["secret"]["secretName"] == "certbound-mtls"
    assert ledger_volumes["certbound-tls"]["secret"]["defaultMode"] == 0o444


def test_services_selecting_the_pod_move_only_the_protected_port_to_mtls() -> None:
    docs = _by_name(inject_file("helm-rendered.yaml") + inject_file("workloads.yaml"))
    payments = docs[("Service", "payments")]["spec"]["ports"]
    assert [(p["name"], p["targetPort"]) for p in payments] == [
        ("http", "certbound-mtls"),
        ("metrics", "metrics"),  # the log shipper's metrics port is not certbound's business
    ]
    # No targetPort means targetPort == port (5000), the protected port.
    assert docs[("Service", "ledger")]["spec"]["ports"] == [
        {"port": 5000, "targetPort": "certbound-mtls"}
    ]


def test_no_services_leaves_them_alone_with_a_warning() -> None:
    result = kube_inject(
        "-f", str(MANIFESTS / "orders.yaml"), "--values", str(VALUES), "--no-services"
    )
    assert result.returncode == 0, result.stderr
    service = _by_name(list(yaml.safe_load_all(result.stdout)))[("Service", "orders")]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert "warning: Service shop/orders: port 80 still targets the workload" in result.stderr


@pytest.mark.slow
def test_only_annotated_pods_are_injected_unless_all_is_given() -> None:
    default = _by_name(inject_file("workloads.yaml"))
    everything = _by_name(inject_file("workloads.yaml", "--all"))
    for docs, expected in ((default, False), (everything, True)):
        template = pod_template(docs[("Deployment", "not-asking")])
        assert template is not None
        assert (sidecar(template) is not None) is expected
        opted_out = pod_template(docs[("Deployment", "opted-out")])
        assert opted_out is not None and sidecar(opted_out) is None  # label "false" wins


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_injecting_twice_changes_nothing(name: str) -> None:
    once = kube_inject("-f", str(MANIFESTS / name), "--values", str(VALUES), "--all")
    assert once.returncode == 0, once.stderr
    twice = kube_inject("-f", "-", "--values", str(VALUES), "--all", stdin=once.stdout)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == once.stdout
    assert "already has a certbound container, left alone" in twice.stderr


def test_helm_quirks_separators_comments_and_empty_documents_are_read() -> None:
    text = (MANIFESTS / "helm-rendered.yaml").read_text()
    assert text.count("---") == 6 and "# Source:" in text
    docs = inject_file("helm-rendered.yaml")
    assert [d["kind"] for d in docs] == [
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
    ]


def test_a_pod_the_chart_already_renders_with_certbound_is_left_alone(helm: str) -> None:
    rendered = subprocess.run(
        [helm, "template", "demo", str(REPO / "helm" / "certbound"), "--namespace", "shop"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = kube_inject("-f", "-", "--values", str(VALUES), "--all", stdin=rendered)
    assert result.returncode == 0, result.stderr
    assert "Deployment shop/demo-certbound: already has a certbound container" in result.stderr
    assert list(yaml.safe_load_all(result.stdout)) == [
        d for d in yaml.safe_load_all(rendered) if d is not None
    ]


def test_objects_it_cannot_handle_get_one_line_each_and_nothing_is_written() -> None:
    result = kube_inject("-f", str(MANIFESTS / "two-ports.yaml"), "--values", str(VALUES))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert lines[0].startswith(
        "certbound: kube-inject: Deployment edge/gateway: declares 2 ports "
        "(gateway:8080, gateway:8081); set the annotation certbound.io/upstream-port"
    )
    assert lines[1].startswith(
        "certbound: kube-inject: Rollout edge/canary: unknown kind with a pod template"
    )
    assert lines[2] == (
        "certbound: kube-inject: Pod edge/kong-proxy: container 'proxy' declares port 17443, "
        "which is certbound's mtls port; set the annotation certbound.io/mtls-port to a free "
        "port (or inject.ports for every pod)"
    )


def test_jobs_refuse_container_mode_because_their_pods_would_never_complete() -> None:
    result = kube_inject(
        "-f", str(MANIFESTS / "workloads.yaml"), "--values", str(VALUES), "--mode", "container"
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "Job search/reindex: a Job's pod never completes" in result.stderr
    assert "CronJob search/report: a Job's pod never completes" in result.stderr


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("kind: Deployment\nmetadata: {name: x\n", "stdin: not valid YAML (line 3)"),
        ("- just\n- a list\n", "document 1: not a Kubernetes object (no kind)"),
        ("plain text\n", "document 1: not a Kubernetes object (no kind)"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: "
            '{certbound.io/inject: "true"}}\nspec: {containers: []}\n',
            "Pod p: the pod spec has no containers",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n",
            "Deployment d: has no spec.template",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: "
            "{spec: {containers: [{name: a}]}}}\n",
            "",  # nothing asks for injection: passed through
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: "
            '{certbound.io/inject: "true"}}\nspec: {containers: [{name: a, ports: '
            "[{containerPort: 17090}]}]}\n",
            "Pod p: container 'a' declares port 17090, which is certbound's admin port",
        ),
    ],
)
def test_bad_input_gets_a_clear_error_and_exit_2(stdin: str, message: str) -> None:
    result = kube_inject("-f", "-", "--values", str(VALUES), stdin=stdin)
    assert "Traceback" not in result.stderr
    if not message:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert f"certbound: kube-inject: {message}" in result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("proxy: {ports: {mtls: 70000}}", "proxy.ports.mtls: expected a port number"),
        ("workload: {port: 8080}", "workload: unknown key"),
        ("proxy: {config: {upstream: {url: http://x}}}", "proxy.config.upstream.url: set by"),
        ("inject: {mode: sidecar}", "inject.mode: expected native or container"),
        ("[1, 2]", "the top level must be a mapping"),
    ],
)
def test_bad_values_get_the_key_path_and_exit_2(tmp_path: Any, values: str, message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    result = kube_inject("-f", str(MANIFESTS / "orders.yaml"), "--values", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_file_and_missing_config_are_clear_errors() -> None:
    result = kube_inject("-f", "/nonexistent/deploy.yaml")
    assert result.returncode == 2 and "cannot read /nonexistent/deploy.yaml" in result.stderr
    result = kube_inject("-f", str(MANIFESTS / "orders.yaml"))  # no values: no tokens config
    assert result.returncode == 2
    assert "Deployment shop/orders: no certbound config" in result.stderr


def test_a_kubectl_list_is_injected_item_by_item() -> None:
    items = load("orders.yaml")
    listed = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    result = kube_inject("-f", "-", "--values", str(VALUES), stdin=listed)
    assert result.returncode == 0, result.stderr
    (out,) = list(yaml.safe_load_all(result.stdout))
    deployment, service = out["items"]
    assert sidecar(deployment["spec"]["template"]) is not None
    assert service["spec"]["ports"][0]["targetPort"] == "certbound-mtls"


DPOP_VALUES = """
proxy:
  config:
    tokens: {issuer: https://login.example.com, audience: https://api.example.com}
    tls: {client_cert: optional}
    dpop: {nonce: true}
  dpop:
    replayCache: {secretName: orders-dpop-redis}
    nonceKey: {secretName: orders-dpop-nonce, key: hmac}
  env: [{name: CERTBOUND_LOG__LEVEL, value: debug}]
tls: {secretName: certbound-mtls}
"""


@pytest.mark.parametrize("mode", ["native", "container"])
def test_dpop_secrets_reach_the_injected_sidecar_as_in_the_chart(tmp_path: Any, mode: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(DPOP_VALUES)
    result = kube_inject(
        "-f", str(MANIFESTS / "orders.yaml"), "--values", str(path), "--mode", mode
    )
    assert result.returncode == 0, result.stderr
    deployment = _by_name(list(yaml.safe_load_all(result.stdout)))[("Deployment", "orders")]
    for version in K8S_VERSIONS[mode]:
        kubernetes_validate.validate(deployment, version, strict=True)
    template = deployment["spec"]["template"]
    container = sidecar(template)
    assert container is not None
    env = container["env"]
    names = [e["name"] for e in env]
    # The pod's own keys, then the Secret, then proxy.env (which may override).
    assert names[-2:] == ["CERTBOUND_DPOP__REPLAY_CACHE", "CERTBOUND_LOG__LEVEL"]
    assert env[-2]["valueFrom"] == {"secretKeyRef": {"name": "orders-dpop-redis", "key": "url"}}
    values = {e["name"]: e.get("value") for e in env}
    # The config is the team's (annotation or ConfigMap): the file path comes as an override.
    assert values["CERTBOUND_DPOP__NONCE_SECRET_FILE"] == "/etc/certbound/dpop-nonce/hmac"
    config = yaml.safe_load(template["metadata"]["annotations"]["certbound.io/config"])
    assert "nonce_secret_file" not in config["dpop"] and "replay_cache" not in config["dpop"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["certbound-dpop-nonce"]["mountPath"] == "/etc/certbound/dpop-nonce"
    assert mounts["certbound-dpop-nonce"]["readOnly"] is True
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["certbound-dpop-nonce"]["secret"] == {
        "secretName": "orders-dpop-nonce",
        "defaultMode": 0o440,  # the pod has an fsGroup
        "items": [{"key": "hmac", "path": "hmac"}],
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            "proxy: {config: {dpop: {replay_cache: 'rediss://:s3cr3t-pw@r:6380'}}}",
            "proxy.config.dpop.replay_cache: holds a password",
        ),
        (
            "proxy: {extraConfig: {dpop: {replay_cache: 'redis://r/0?password=s3cr3t-pw'}}}",
            "proxy.config.dpop.replay_cache: holds a password",
        ),
        (
            "proxy: {config: {dpop: {replay_cache: 'redis://r'}}, "
            "dpop: {replayCache: {secretName: s}}}",
            "proxy.config.dpop.replay_cache: set, and so is proxy.dpop.replayCache.secretName",
        ),
        (
            "proxy: {config: {dpop: {nonce_secret_file: /k}}, dpop: {nonceKey: {secretName: s}}}",
            "proxy.config.dpop.nonce_secret_file: set by the injector",
        ),
        ("proxy: {dpop: {nonceKey: {key: a/b}}}", "proxy.dpop.nonceKey.key: not a Secret key"),
        ("proxy: {dpop: {replayCache: {secretName: 3}}}", "proxy.dpop.replayCache.secretName"),
        ("proxy: {dpop: {redis: {}}}", "proxy.dpop.redis: unknown key"),
    ],
)
def test_bad_dpop_values_are_refused_without_echoing_a_password(
    tmp_path: Any, values: str, message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    result = kube_inject("-f", str(MANIFESTS / "orders.yaml"), "--values", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "s3cr3t-pw" not in result.stderr

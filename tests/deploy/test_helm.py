"""helm/certbound: lint, render, validate every manifest offline, and check the
promises the chart makes (security context, ports, hot reload vs restart)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .conftest import ALL_FEATURES, CHART, RenderFn, find, run_helm
from .crd_schemas import BY_KIND

# Oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and the newest bundled schemas.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
VALUE_SETS = {"defaults": (), "all-features": (ALL_FEATURES,)}


@pytest.fixture(scope="module")
def default_docs(render: RenderFn) -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def all_docs(render: RenderFn) -> list[dict[str, Any]]:
    return render([ALL_FEATURES])


def _containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = find(docs, "Deployment", "demo-certbound")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = find(docs, "ConfigMap", "demo-certbound")
    loaded: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return loaded


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict_passes(helm: str, values: tuple[Path, ...]) -> None:
    args = ["lint", str(CHART), "--strict"]
    for f in values:
        args += ["-f", str(f)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_rendered_manifest_matches_its_kubernetes_or_crd_schema(
    render: RenderFn, values: tuple[Path, ...]
) -> None:
    docs = render(values)
    checked = set()
    for doc in docs:
        crd_schema = BY_KIND.get((doc["apiVersion"], doc["kind"]))
        if crd_schema is not None:
            jsonschema.validate(doc, crd_schema)
        else:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= checked


def test_all_features_render_every_optional_object(all_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in all_docs)
    assert kinds == sorted(
        [
            "Certificate",
            "Certificate",
            "Certificate",  # the injector's CA and serving certificate, the chart's own
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "Issuer",
            "Issuer",  # the injector's self-signed and CA issuers
            "MutatingWebhookConfiguration",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


def test_defaults_render_no_optional_crd_objects(default_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {
        "Certificate",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "MutatingWebhookConfiguration",
    }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("workload.port=70000", "at '/workload/port': maximum: got 70,000, want 65,535"),
        ("proxy.config.tokens.issuer=", "at '/proxy/config/tokens/issuer': minLength"),
        ("proxy.config.upstream.url=http://elsewhere", "additional properties 'url' not allowed"),
        ("proxy.config.tokens.algorithms[0]=none", "at '/proxy/config/tokens/algorithms/0'"),
        ("proxy.config.tls.min_version=1.1", "at '/proxy/config/tls/min_version'"),
        ("proxy.config.tokens.nonsense=1", "additional properties 'nonsense' not allowed"),
        ("certManager.enabled=true", "at '/certManager/issuerRef/name': minLength"),
        (
            "proxy.config.dpop.replay_cache_unavailable=maybe",
            "/proxy/config/dpop/replay_cache_unav",
        ),
        ("proxy.config.dpop.nonce_rotation_seconds=5", "at '/proxy/config/dpop/nonce_rotation"),
        ("proxy.config.dpop.replay_cache_timeout_seconds=10", "/dpop/replay_cache_timeout_seconds"),
        ("proxy.dpop.nonceKey.key=a/b", "at '/proxy/dpop/nonceKey/key'"),
        ("proxy.dpop.replayCache.secretName=Bad_Name", "at '/proxy/dpop/replayCache/secretName'"),
        (
            "proxy.listen.handshake_timeout_seconds=0",
            "at '/proxy/listen/handshake_timeout_seconds': minimum",
        ),
        ("proxy.listen.memory_budget_mib=16", "at '/proxy/listen/memory_budget_mib'"),
        ("proxy.listen.max_header_bytes=10", "at '/proxy/listen/max_header_bytes': minimum"),
        ("proxy.listen.event_loop=trio", "at '/proxy/listen/event_loop'"),
        ("proxy.listen.port=9000", "at '/proxy/listen'"),  # the chart's, from proxy.ports
    ],
)
def test_values_schema_rejects_bad_value_with_clear_message(
    helm: str, setting: str, message: str
) -> None:
    result = run_helm(helm, "template", "demo", str(CHART), "--set", setting)
    assert result.returncode != 0, f"{setting} was accepted"
    assert "don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_values_schema_is_valid_draft7(helm: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


def test_every_value_has_a_comment_and_a_readme_row() -> None:
    readme = (CHART / "README.md").read_text()
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    undocumented, missing_rows = [], []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-"):
            continue
        indent = len(line) - len(line.lstrip())
        if ":" not in stripped:
            continue
        key = stripped.split(":", 1)[0]
        while path and path[-1][0] >= indent:
            path.pop()
        parents = [p for _, p in path]
        in_default_object = any(
            p
            in {
                "securityContext",
                "podSecurityContext",
                "resources",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
            }
            for p in parents
        )
        path.append((indent, key))
        if in_default_object:
            continue
        if not lines[i - 1].strip().startswith("#"):
            undocumented.append(".".join([*parents, key]))
        if f"`{'.'.join([*parents, key])}`" not in readme:
            missing_rows.append(".".join([*parents, key]))
    assert not undocumented, f"values without a comment above them: {undocumented}"
    assert not missing_rows, f"values missing from helm/certbound/README.md: {missing_rows}"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_both_containers_run_locked_down(render: RenderFn, values: tuple[Path, ...]) -> None:
    docs = render(values)
    pod = find(docs, "Deployment", "demo-certbound")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for name, c in _containers(docs).items():
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), name


def test_only_the_mtls_port_is_exposed_by_the_main_service(
    default_docs: list[dict[str, Any]],
) -> None:
    svc = find(default_docs, "Service", "demo-certbound")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["mtls"]
    containers = _containers(default_docs)
    assert "ports" not in containers["workload"]
    ports = {p["name"]: p["containerPort"] for p in containers["certbound"]["ports"]}
    assert ports == {"mtls": 8443, "admin": 9090}
    admin = find(default_docs, "Service", "demo-certbound-admin")
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]


def test_probes_use_healthz_and_readyz_on_the_admin_port(
    default_docs: list[dict[str, Any]],
) -> None:
    proxy = _containers(default_docs)["certbound"]
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_config_points_at_mounted_secret_and_localhost_workload(
    render: RenderFn, values: tuple[Path, ...]
) -> None:
    docs = render(values)
    config = _config(docs)
    source = yaml.safe_load(values[0].read_text()) if values else {}
    workload_port = source.get("workload", {}).get("port", 8080)
    assert config["upstream"]["url"] == f"http://127.0.0.1:{workload_port}"
    assert config["tls"]["cert_file"] == "/etc/certbound/tls/tls.crt"
    assert config["tls"]["key_file"] == "/etc/certbound/tls/tls.key"
    assert config["tls"]["client_ca_file"].startswith("/etc/certbound/")
    proxy = _containers(docs)["certbound"]
    assert proxy["args"] == ["run", "--config", "/etc/certbound/config.yaml"]
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    # No subPath on the TLS mount: kubelet's update of the Secret must reach the files.
    assert "subPath" not in mounts["/etc/certbound/tls"]
    ca_dir = str(Path(config["tls"]["client_ca_file"]).parent)
    assert "subPath" not in mounts[ca_dir]
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert config["listen"]["port"] == ports["mtls"]
    assert config["admin"]["port"] == ports["admin"]
    # Every proxy.listen key reaches the config under the name certbound reads, at its value.
    chart_listen = yaml.safe_load((CHART / "values.yaml").read_text())["proxy"]["listen"]
    assert {k: config["listen"][k] for k in chart_listen} == chart_listen


def test_config_change_rolls_pods_but_scaling_does_not(render: RenderFn) -> None:
    def checksum(*sets: str) -> str:
        dep = find(render(sets=sets), "Deployment")
        value: str = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum()
    assert checksum("proxy.config.log.level=debug") != base
    assert checksum("replicaCount=5") == base


def test_prometheus_rule_embeds_the_alert_file_groups(all_docs: list[dict[str, Any]]) -> None:
    rule = find(all_docs, "PrometheusRule")
    alerts = yaml.safe_load((CHART / "files" / "certbound-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _late_cert_rule(docs: list[dict[str, Any]]) -> dict[str, Any]:
    groups = find(docs, "PrometheusRule")["spec"]["groups"]
    rules = [
        r
        for g in groups
        for r in g["rules"]
        if r.get("alert") == "CertboundClientCertsLateInLifetime"
    ]
    assert len(rules) == 1
    return rules[0]


def test_late_client_certificate_alert_follows_the_values(
    render: RenderFn, tmp_path: Path, helm: str
) -> None:
    """The fraction and the absolute time left name histogram buckets; the rule is rebuilt
    from them, and stays valid PromQL (promtool checks the rendered rules)."""
    values = tmp_path / "late.yaml"
    values.write_text(
        "monitoring:\n  prometheusRule:\n    enabled: true\n    clientCertificates:\n"
        "      lateInLifetimeFraction: 0.67\n      minRemainingSeconds: 3600\n"
    )
    rule = _late_cert_rule(render([values]))
    assert 'certbound_client_cert_lifetime_elapsed_ratio_bucket{le="0.67"}' in rule["expr"]
    assert 'certbound_client_cert_remaining_validity_seconds_bucket{le="3600.0"}' in rule["expr"]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "late", "rules": [rule]}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required: run the test command, bash scripts/test.sh"
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    values.write_text(
        "monitoring:\n  prometheusRule:\n    enabled: true\n    clientCertificates:\n"
        "      lateInLifetimeFraction: null\n      minRemainingSeconds: null\n"
    )
    refused = run_helm(helm, "template", "demo", str(CHART), "-f", str(values))
    assert refused.returncode != 0
    assert "set lateInLifetimeFraction or minRemainingSeconds" in refused.stderr


def test_late_client_certificate_fraction_must_be_a_bucket_bound(tmp_path: Path, helm: str) -> None:
    values = tmp_path / "late.yaml"
    values.write_text(
        "monitoring:\n  prometheusRule:\n    enabled: true\n    clientCertificates:\n"
        "      lateInLifetimeFraction: 0.6\n"
    )
    refused = run_helm(helm, "template", "demo", str(CHART), "-f", str(values))
    assert refused.returncode != 0
    assert "lateInLifetimeFraction" in refused.stderr


def test_service_monitor_scrapes_metrics_on_the_admin_service(
    all_docs: list[dict[str, Any]],
) -> None:
    monitor = find(all_docs, "ServiceMonitor")
    admin = find(all_docs, "Service", "demo-certbound-admin")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= admin["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in admin["spec"]["ports"]}
    main = find(all_docs, "Service", "demo-certbound")
    assert not selector.items() <= main["metadata"]["labels"].items()


def test_certificate_writes_the_mounted_secret_for_the_service_names(
    all_docs: list[dict[str, Any]],
) -> None:
    cert = find(all_docs, "Certificate", "demo-certbound")
    pod = find(all_docs, "Deployment", "demo-certbound")["spec"]["template"]["spec"]
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "certbound-tls")
    assert cert["spec"]["secretName"] == tls_volume["secret"]["secretName"]
    assert "demo-certbound.shop.svc" in cert["spec"]["dnsNames"]
    assert "api.payments.example.org" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {
        "name": "internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_network_policy_admits_only_the_proxy_ports(all_docs: list[dict[str, Any]]) -> None:
    policy = find(all_docs, "NetworkPolicy")
    ports = sorted(p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"])
    assert ports == [10443, 19090]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_pdb_uses_min_available_when_set(all_docs: list[dict[str, Any]]) -> None:
    pdb = find(all_docs, "PodDisruptionBudget", "demo-certbound")
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]


def test_notes_explain_the_curl_call(helm: str) -> None:
    result = run_helm(helm, "install", "demo", str(CHART), "--dry-run=client", "-n", "shop")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    for fragment in ("--cert client.crt", "--key client.key", "--cacert", "Authorization: Bearer"):
        assert fragment in notes


def test_readme_values_example_for_a_legacy_service_renders(
    render: RenderFn, tmp_path: Path
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    start = readme.index("a values file (`helm install orders ./helm/certbound -f orders.yaml`)")
    block = readme[
        readme.index("```yaml\n", start) + 8 : readme.index(
            "```", readme.index("```yaml\n", start) + 8
        )
    ]
    values = tmp_path / "orders.yaml"
    values.write_text(block)
    docs = render([values], release="orders")
    config = yaml.safe_load(find(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["policy"]["routes"][0] == {"path": "/health", "public": True}
    assert config["upstream"]["url"] == "http://127.0.0.1:8080"
    find(docs, "ServiceMonitor")
    find(docs, "PrometheusRule")


def test_several_issuers_claim_headers_and_strip_render_to_a_config_certbound_accepts(
    render: RenderFn, tmp_path: Path
) -> None:
    """The chart's placeholder issuer/audience are set to null, as its README says; the
    rendered config then loads, and the shorthand placeholders do not clash."""
    values = tmp_path / "issuers.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "proxy": {
                    "config": {
                        "tokens": {
                            "issuer": None,
                            "audience": None,
                            "max_lifetime_seconds": 900,
                            "issuers": [
                                {"name": "corp", "issuer": "https://login.example.com",
                                 "audience": ["orders", "https://orders.example.com"]},
                                {"issuer": "https://idp.partner.example", "audience": "orders",
                                 "max_lifetime_seconds": 300},
                            ],
                        },
                        "forwarding": {
                            "claim_headers": {"X-User-Email": "email", "X-Roles": "roles"},
                            "authorization": "strip",
                        },
                    }
                }
            }
        )
    )  # fmt: skip
    config = _config(render([values]))
    for key in ("cert_file", "key_file", "client_ca_file"):
        config["tls"][key] = "/dev/null"  # the mounted Secret's paths do not exist here
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from proxy.config import load_settings
    from proxy.settings import trusted_issuers

    settings = load_settings(path, environ={})
    assert [(e.name, e.max_lifetime_seconds) for e in trusted_issuers(settings.tokens)] == [
        ("corp", 900),
        ("1", 300),
    ]
    assert settings.forwarding.authorization == "strip"
    # helm writes maps sorted by key; the order of claim headers carries no meaning
    assert dict(settings.forwarding.claim_headers) == {"X-User-Email": "email", "X-Roles": "roles"}


def test_connection_caps_come_from_the_memory_limit_unless_proxy_listen_sets_them(
    render: RenderFn, tmp_path: Path
) -> None:
    """By default the chart writes memory_budget_mib 0: certbound reads its budget from the
    container's memory limit (proxy/capacity.py). Caps given in proxy.listen render to a
    config certbound accepts, beside the listen keys the chart owns, and are applied."""
    from proxy.capacity import connection_caps
    from proxy.config import load_settings

    docs = render()
    listen = set(_config(docs)["listen"])
    assert not listen & {"max_connections", "max_handshakes", "memory_budget_mib"}, listen
    limits = _containers(docs)["certbound"]["resources"]["limits"]
    assert limits["memory"] == "256Mi"  # what docs/operations.md's figures are for
    values = tmp_path / "caps.yaml"
    listen = {"max_handshakes": 300, "handshake_timeout_seconds": 5, "memory_budget_mib": 200}
    values.write_text(yaml.safe_dump({"proxy": {"listen": listen}}))
    config = _config(render([values]))
    for key in ("cert_file", "key_file", "client_ca_file"):
        config["tls"][key] = "/dev/null"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})
    assert (settings.listen.port, settings.listen.handshake_timeout_seconds) == (8443, 5.0)
    assert settings.listen.memory_budget_mib == 200
    caps = connection_caps(settings.listen, settings.listen.workers, 200 << 20)
    assert caps.max_handshakes == 300


def test_values_schema_rejects_a_bad_claim_header_name(helm: str) -> None:
    result = run_helm(
        helm,
        "template",
        "demo",
        str(CHART),
        "--set",
        "proxy.config.forwarding.claim_headers.X:Y=a",
    )
    assert result.returncode != 0, "X:Y was accepted"
    assert "invalid propertyName 'X:Y'" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------ DPoP

REDIS_URL = "rediss://:s3cr3t-pw@redis.shop.svc:6380/0"


def test_dpop_secrets_render_env_from_secret_and_a_mounted_nonce_key(
    render: RenderFn, tmp_path: Path
) -> None:
    docs = render(
        sets=[
            "proxy.dpop.replayCache.secretName=orders-dpop-redis",
            "proxy.dpop.nonceKey.secretName=orders-dpop-nonce",
            "proxy.config.dpop.nonce=true",
            "proxy.env[0].name=CERTBOUND_LOG__LEVEL",
            "proxy.env[0].value=debug",
        ]
    )
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    proxy = _containers(docs)["certbound"]
    assert proxy["env"] == [
        {
            "name": "CERTBOUND_DPOP__REPLAY_CACHE",
            "valueFrom": {"secretKeyRef": {"name": "orders-dpop-redis", "key": "url"}},
        },
        {"name": "CERTBOUND_LOG__LEVEL", "value": "debug"},  # proxy.env after: it may override
    ]
    mounts = {m["name"]: m for m in proxy["volumeMounts"]}
    assert mounts["certbound-dpop-nonce"] == {
        "name": "certbound-dpop-nonce",
        "mountPath": "/etc/certbound/dpop-nonce",
        "readOnly": True,
    }
    pod = find(docs, "Deployment", "demo-certbound")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["certbound-dpop-nonce"]["secret"] == {
        "secretName": "orders-dpop-nonce",
        "defaultMode": 0o440,
        "items": [{"key": "nonce.key", "path": "nonce.key"}],
    }
    config = _config(docs)
    assert config["dpop"]["nonce_secret_file"] == "/etc/certbound/dpop-nonce/nonce.key"
    assert config["dpop"]["replay_cache"] == ""  # the URL stays out of the ConfigMap

    # certbound reads the rendered config plus the Secret's URL as kubelet passes it.
    key_file = tmp_path / "nonce.key"
    key_file.write_text("c2hhcmVkLWtleS1mb3ItYWxsLXJlcGxpY2FzLTMyYnl0ZXM=\n")
    for key in ("cert_file", "key_file", "client_ca_file"):
        config["tls"][key] = "/dev/null"  # the mounted Secret's paths do not exist here
    config["dpop"]["nonce_secret_file"] = str(key_file)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from proxy.config import load_settings

    settings = load_settings(path, environ={"CERTBOUND_DPOP__REPLAY_CACHE": REDIS_URL + "\n"})
    assert settings.dpop.replay_cache == REDIS_URL
    assert settings.dpop.nonce is True
    assert settings.dpop.replay_cache_unavailable == "refuse"


def test_dpop_defaults_render_no_secret_env_or_volume(default_docs: list[dict[str, Any]]) -> None:
    proxy = _containers(default_docs)["certbound"]
    assert "env" not in proxy
    assert "certbound-dpop-nonce" not in {m["name"] for m in proxy["volumeMounts"]}
    dpop = _config(default_docs)["dpop"]
    assert dpop["replay_cache"] == "" and dpop["nonce"] is False
    assert dpop["nonce_secret_file"] == ""


def test_dpop_nonce_on_a_single_replica_needs_no_key(render: RenderFn) -> None:
    docs = render(sets=["replicaCount=1", "proxy.config.dpop.nonce=true"])
    assert _config(docs)["dpop"]["nonce"] is True


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["proxy.config.dpop.nonce=true"],
            "proxy.config.dpop.nonce is true with replicaCount 2 but no shared nonce key",
        ),
        (
            ["replicaCount=3", "proxy.extraConfig.dpop.nonce=true"],
            "with replicaCount 3 but no shared nonce key",
        ),
        (
            ["proxy.dpop.nonceKey.secretName=k"],
            "proxy.dpop.nonceKey.secretName is set but proxy.config.dpop.nonce is not true",
        ),
        (
            [
                "proxy.config.dpop.nonce=true",
                "proxy.dpop.nonceKey.secretName=k",
                "proxy.config.dpop.nonce_secret_file=/k",
            ],
            "proxy.config.dpop.nonce_secret_file and proxy.dpop.nonceKey.secretName are both set",
        ),
        (
            [
                "proxy.config.dpop.replay_cache=redis://r:6379",
                "proxy.dpop.replayCache.secretName=u",
            ],
            "proxy.config.dpop.replay_cache and proxy.dpop.replayCache.secretName are both set",
        ),
        (
            [f"proxy.config.dpop.replay_cache={REDIS_URL}"],
            "proxy.config.dpop.replay_cache holds a password",
        ),
        (
            ["proxy.extraConfig.dpop.replay_cache=redis://r:6379/0?password=s3cr3t-pw"],
            "proxy.config.dpop.replay_cache holds a password",
        ),
        (
            ["proxy.config.dpop.replay_cache=https://:s3cr3t-pw@r"],
            "proxy.config.dpop.replay_cache: must be empty or a redis:// or rediss:// URL",
        ),
    ],
)
def test_dpop_settings_the_chart_refuses_to_render(
    helm: str, sets: list[str], message: str
) -> None:
    args = ["template", "demo", str(CHART)]
    for s in sets:
        args += ["--set", s]
    result = run_helm(helm, *args)
    assert result.returncode != 0, f"{sets} was accepted"
    assert message in result.stderr, result.stderr
    assert "s3cr3t-pw" not in result.stderr  # a Redis password is never echoed


def test_a_replay_cache_url_without_password_may_stay_in_values(render: RenderFn) -> None:
    docs = render(sets=["proxy.config.dpop.replay_cache=redis://dpop-redis.shop.svc:6379/0"])
    assert _config(docs)["dpop"]["replay_cache"] == "redis://dpop-redis.shop.svc:6379/0"


def _notes(helm: str, *sets: str) -> str:
    args = ["install", "demo", str(CHART), "--dry-run=client", "-n", "shop"]
    for s in sets:
        args += ["--set", s]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


@pytest.mark.slow
@pytest.mark.slow
def test_notes_warn_about_per_process_dpop_replay_caches_only_when_it_matters(
    helm: str,
) -> None:
    warning = "each remember DPoP proof jti values on their own"
    optional = "proxy.config.tls.client_cert=optional"
    assert warning not in _notes(helm)  # mTLS only: nothing to say
    notes = _notes(helm, optional)
    assert f"the 2 replicas {warning}" in notes
    assert "proxy.dpop.replayCache.secretName" in notes
    assert warning in _notes(helm, "replicaCount=1", "proxy.workers=4", optional)
    assert warning not in _notes(helm, "replicaCount=1", optional)
    assert warning not in _notes(helm, optional, "proxy.dpop.replayCache.secretName=r")
    assert warning not in _notes(helm, optional, "proxy.config.dpop.replay_cache=redis://r")
    route = "proxy.config.policy.routes[0].path=/pay,proxy.config.policy.routes[0].binding=dpop"
    assert warning in _notes(helm, route)

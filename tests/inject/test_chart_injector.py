"""The chart's injector as `helm template` renders it: the injector-only install, the token
settings it refuses to guess, the webhook's CA chain, selectors, PDB and scheduling."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from .conftest import REPO

CHART = REPO / "helm" / "certbound"
INJECTOR_ONLY = [
    "--set",
    "workload.enabled=false",
    "--set",
    "injector.enabled=true",
    "--set",
    "injector.tlsSecretName=platform-mtls",
]
TOKENS = [
    "--set",
    "proxy.config.tokens.issuer=https://login.example.com",
    "--set",
    "proxy.config.tokens.audience=https://api.example.com",
]


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", "demo", str(CHART), "--namespace", "platform", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = _helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_injector_only_install_renders_no_demo_object_and_no_placeholder(helm: str) -> None:
    docs = _render(helm, *INJECTOR_ONLY, *TOKENS)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert all("injector" in name for _, name in names), names
    assert not [d for d in docs if "http-echo" in yaml.safe_dump(d)]
    text = yaml.safe_dump_all(docs)
    assert "issuer.example.com" not in text and "certbound-demo" not in text
    config = yaml.safe_load(
        _find(docs, "ConfigMap", "demo-certbound-injector")["data"]["config.yaml"]
    )
    assert config["values"]["proxy"]["config"]["tokens"]["issuer"] == "https://login.example.com"
    assert config["values"]["inject"]["ports"] == {"mtls": 17443, "admin": 17090}


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ([], "proxy.config.tokens.issuer and proxy.config.tokens.audience"),
        (TOKENS[:2], "proxy.config.tokens.audience"),
        (TOKENS[2:], "proxy.config.tokens.issuer"),
    ],
)
def test_injector_without_token_settings_fails_naming_them(
    helm: str, extra: list[str], missing: str
) -> None:
    for workload in ("true", "false"):
        result = _helm(helm, *INJECTOR_ONLY, "--set", f"workload.enabled={workload}", *extra)
        assert result.returncode != 0
        assert f"injector.enabled: set {missing} to your authorization server's" in result.stderr


def test_an_injector_config_map_replaces_the_token_settings(helm: str) -> None:
    docs = _render(helm, *INJECTOR_ONLY, "--set", "injector.configMap=platform-certbound")
    assert _find(docs, "Deployment", "demo-certbound-injector")


def test_webhook_trusts_a_long_lived_ca_that_signs_the_serving_certificate(helm: str) -> None:
    docs = _render(helm, *INJECTOR_ONLY, *TOKENS)
    config = _find(docs, "MutatingWebhookConfiguration", "demo-certbound-injector-platform")
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "platform/demo-certbound-injector-ca"
    }
    selfsigned = _find(docs, "Issuer", "demo-certbound-injector-selfsigned")
    assert selfsigned["spec"] == {"selfSigned": {}}
    ca = _find(docs, "Certificate", "demo-certbound-injector-ca")
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"]["name"] == "demo-certbound-injector-selfsigned"
    assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never"
    ca_issuer = _find(docs, "Issuer", "demo-certbound-injector-ca")
    assert ca_issuer["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    serving = _find(docs, "Certificate", "demo-certbound-injector")
    assert serving["spec"]["issuerRef"]["name"] == "demo-certbound-injector-ca"
    assert serving["spec"]["privateKey"]["rotationPolicy"] == "Always"
    assert "demo-certbound-injector.platform.svc" in serving["spec"]["dnsNames"]
    # The serving certificate is renewed long before the CA.
    assert int(ca["spec"]["duration"].rstrip("h")) > 10 * int(
        serving["spec"]["duration"].rstrip("h")
    )


def test_selectors_exclude_system_namespaces_and_only_the_injectors_own_pods(helm: str) -> None:
    docs = _render(helm, *INJECTOR_ONLY, *TOKENS)
    config = _find(docs, "MutatingWebhookConfiguration", "demo-certbound-injector-platform")
    hooks = {h["name"]: h for h in config["webhooks"]}
    assert {n: h["clientConfig"]["service"]["path"] for n, h in hooks.items()} == {
        "namespace.inject.certbound.io": "/inject/namespace",
        "pod.inject.certbound.io": "/inject",
    }
    for hook in hooks.values():
        assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
        namespaces = {e["key"]: e for e in hook["namespaceSelector"]["matchExpressions"]}
        assert namespaces["kubernetes.io/metadata.name"]["operator"] == "NotIn"
        assert namespaces["kubernetes.io/metadata.name"]["values"] == [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "platform",
        ]
        # Only certbound.io/inject: a label like app.kubernetes.io/component=injector is
        # common, and excluding it would exempt other teams' pods.
        keys = [e["key"] for e in hook["objectSelector"]["matchExpressions"]]
        assert keys == ["certbound.io/inject"]
    namespace_hook = hooks["namespace.inject.certbound.io"]
    assert namespace_hook["namespaceSelector"]["matchExpressions"][1] == {
        "key": "certbound.io/injection",
        "operator": "In",
        "values": ["enabled"],
    }
    # A namespace labelled disabled wins over a pod's opt-in label.
    pod_hook = hooks["pod.inject.certbound.io"]
    assert pod_hook["namespaceSelector"]["matchExpressions"][1] == {
        "key": "certbound.io/injection",
        "operator": "NotIn",
        "values": ["enabled", "disabled"],
    }
    assert pod_hook["objectSelector"]["matchExpressions"] == [
        {"key": "certbound.io/inject", "operator": "In", "values": ["true"]}
    ]
    injector = _find(docs, "Deployment", "demo-certbound-injector")
    labels = injector["spec"]["template"]["metadata"]["labels"]
    assert labels["certbound.io/inject"] == "false"  # neither entry is sent its own pods


def test_injector_pdb_only_with_more_than_one_replica(helm: str) -> None:
    for replicas, expected in ((1, 0), (2, 1), (3, 1)):
        docs = _render(helm, *INJECTOR_ONLY, *TOKENS, "--set", f"injector.replicas={replicas}")
        pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        assert len(pdbs) == expected, replicas


def test_injector_scheduling_and_pull_secrets_reach_its_pods(helm: str) -> None:
    values = {
        "injector": {
            "priorityClassName": "system-cluster-critical",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
            },
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "injector"}},
                }
            ],
            "imagePullSecrets": [{"name": "registry"}],
        }
    }
    args = [f"--set-json=injector.{k}={json.dumps(v)}" for k, v in values["injector"].items()]
    docs = _render(helm, *INJECTOR_ONLY, *TOKENS, *args)
    pod = _find(docs, "Deployment", "demo-certbound-injector")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == values["injector"]["tolerations"]
    assert pod["affinity"] == values["injector"]["affinity"]
    assert pod["topologySpreadConstraints"] == values["injector"]["topologySpreadConstraints"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    # Without its own, the injector pulls with the chart's.
    docs = _render(helm, *INJECTOR_ONLY, *TOKENS, '--set-json=imagePullSecrets=[{"name":"r2"}]')
    pod = _find(docs, "Deployment", "demo-certbound-injector")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "r2"}]


def test_injector_only_notes_say_what_to_label_and_that_services_are_yours(helm: str) -> None:
    result = subprocess.run(
        [
            helm,
            "install",
            "demo",
            str(CHART),
            "--dry-run=client",
            "-n",
            "platform",
            *INJECTOR_ONLY,
            *TOKENS,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "certbound.io/injection=enabled" in notes
    assert "move each Service's targetPort to\ncertbound-mtls yourself" in notes
    assert "curl" not in notes

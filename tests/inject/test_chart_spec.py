"""One sidecar: the chart renders the same certbound container as proxy/inject/spec.py
builds from the same values, and the chart's injector hands its sidecar the same values."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.inject.spec import DEFAULT_VALUES, options_from_values, sidecar_container

from .conftest import REPO

CHART = REPO / "helm" / "certbound"
ALL_FEATURES = REPO / "tests" / "deploy" / "values-all-features.yaml"
VALUE_SETS = {"defaults": None, "all-features": ALL_FEATURES}


def _render(helm: str, values: Path | None) -> list[dict[str, Any]]:
    args = [helm, "template", "demo", str(CHART), "--namespace", "shop"]
    if values:
        args += ["-f", str(values)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _spec_values(values: dict[str, Any]) -> dict[str, Any]:
    """The keys of chart values that shape the sidecar (spec.DEFAULT_VALUES' keys)."""
    proxy = {k: v for k, v in values.get("proxy", {}).items() if k in DEFAULT_VALUES["proxy"]}
    tls = {k: v for k, v in values.get("tls", {}).items() if k in DEFAULT_VALUES["tls"]}
    return {"proxy": proxy, "tls": tls}


def test_chart_defaults_are_the_spec_defaults() -> None:
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    ours = _spec_values(chart)
    expected = {"proxy": dict(DEFAULT_VALUES["proxy"]), "tls": DEFAULT_VALUES["tls"]}
    # proxy.config defaults are certbound's own defaults, written out in the chart.
    ours["proxy"].pop("config")
    expected["proxy"].pop("config")
    assert ours == expected


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_renders_the_container_the_spec_builds(helm: str, values: Path | None) -> None:
    docs = _render(helm, values)
    pod = _find(docs, "Deployment", "demo-certbound")["spec"]["template"]["spec"]
    (rendered,) = [c for c in pod["containers"] if c["name"] == "certbound"]
    source = yaml.safe_load(values.read_text()) if values else {}
    options = options_from_values(_spec_values(source) | {"inject": {"mode": "container"}})
    assert rendered == sidecar_container(options)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_chart_injector_gives_pods_the_chart_sidecar(helm: str, values: Path | None) -> None:
    sets = values or _enable_injector()
    docs = _render(helm, sets)
    pod = _find(docs, "Deployment", "demo-certbound")["spec"]["template"]["spec"]
    (chart_sidecar,) = [c for c in pod["containers"] if c["name"] == "certbound"]
    config = yaml.safe_load(
        _find(docs, "ConfigMap", "demo-certbound-injector")["data"]["config.yaml"]
    )
    options = options_from_values(config["values"])
    assert sidecar_container(options) == chart_sidecar
    assert options.tls_secret == yaml.safe_load(sets.read_text())["injector"]["tlsSecretName"]


def _enable_injector() -> Path:
    path = REPO / "tests" / "inject" / "manifests" / "chart-injector.yaml"
    return path


def test_proxy_listen_reaches_the_injected_config_as_the_chart_renders_it(
    helm: str, tmp_path: Path
) -> None:
    """proxy.listen is the one home of listen.*: the chart's injector passes it on, and the
    config kube-inject writes has the listen keys the chart's own ConfigMap has (host, port
    and workers aside: the injector sets them from the pod)."""
    listen = {"max_handshakes": 300, "memory_budget_mib": 200, "request_buffer_bytes": 0}
    values = tmp_path / "listen.yaml"
    chart_values = yaml.safe_load(_enable_injector().read_text())
    chart_values["proxy"]["listen"] = listen
    values.write_text(yaml.safe_dump(chart_values))
    docs = _render(helm, values)
    chart = yaml.safe_load(_find(docs, "ConfigMap", "demo-certbound")["data"]["config.yaml"])
    injector = yaml.safe_load(
        _find(docs, "ConfigMap", "demo-certbound-injector")["data"]["config.yaml"]
    )
    injected = options_from_values(injector["values"]).config["listen"]
    owned = {"host", "port", "workers"}
    assert injected == {k: v for k, v in chart["listen"].items() if k not in owned}
    assert injected.items() >= listen.items()

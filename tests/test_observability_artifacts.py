"""Checks of the operator-facing observability artifacts against the metrics contract.

* helm/certbound/files/certbound-alerts.yaml: real `promtool check rules` and
  `promtool test rules tests/promtool/alerts_test.yaml`, annotations/labels of every alert,
  metric names and label values used in the expressions.
* deploy/grafana/certbound-dashboard.json: parses, uses a datasource template variable,
  every panel expression names only contract metrics and is valid PromQL (checked by promtool).

promtool comes from the Debian `prometheus` package: `sudo .ci/install-promtool.sh`.
A missing promtool fails these tests; it never skips them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from proxy import metrics as proxy_metrics
from proxy.errors import HandshakeFailure, Outcome, Reason
from tests.support.dashboard import dashboard_exprs, iter_panels, load_dashboard

ROOT = Path(__file__).resolve().parent.parent
ALERTS_FILE = ROOT / "helm" / "certbound" / "files" / "certbound-alerts.yaml"
ALERTS_TEST_FILE = ROOT / "tests" / "promtool" / "alerts_test.yaml"
INSTALL_HINT = "promtool not found on PATH: run `sudo bash .ci/install-promtool.sh` (as root)"

# The contract is the code: metric names, types and label names come from proxy/metrics.py,
# outcome and reason values from proxy/errors.py. Only the small closed sets that live as
# literals at their one call site are spelled here.
CLOSED_LABEL_VALUES: dict[str, set[str] | None] = {
    "outcome": {o.value for o in Outcome},
    # Request reasons, and the handshake failure reasons of certbound_tls_handshake_failures.
    "reason": {r.value for r in Reason} | {f.value for f in HandshakeFailure},
    "kind": {"connect", "timeout", "reset"},  # certbound_upstream_errors_total
    "result": {"success", "failure"},
    "role": {"serving", "client_ca"},
    "status": {"good", "revoked", "unknown", "error"},  # certbound_ocsp_answers
    "index": None,  # None: any value
    "issuer": None,  # configured names, whatever they are
    "version": None,
}
# A label whose values differ on one metric: {metric name as in metrics.py: {label: values}}.
METRIC_LABEL_VALUES: dict[str, dict[str, set[str] | None]] = {
    # What certbound did with a proof the shared replay cache could not record in time.
    "certbound_dpop_replay_cache_failures": {"outcome": {"refused", "allowed"}},
    "certbound_introspection_requests": {"result": set(proxy_metrics.INTROSPECTION_RESULTS)},
    "certbound_connections_refused": {"kind": {"connections", "handshakes"}},
}


def _contract() -> dict[str, dict[str, Any]]:
    contract: dict[str, dict[str, Any]] = {}
    for metric in vars(proxy_metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        [family] = metric.describe()
        name = family.name + "_total" if family.type == "counter" else family.name
        closed = CLOSED_LABEL_VALUES | METRIC_LABEL_VALUES.get(family.name, {})
        labels = {label: closed[label] for label in metric._labelnames}
        contract[name] = {"type": family.type, "labels": labels}
    return contract


CONTRACT_METRICS = _contract()
# Labels added by the scrape (Kubernetes service discovery / relabelling), not by certbound.
TARGET_LABELS = {"namespace", "pod", "job", "instance"}

REQUIRED_ALERTS = {
    "CertboundThumbprintMismatchHigh",
    "CertboundReportOnlyBindingFailures",
    "CertboundIntrospectionFailing",
    "CertboundClientCertsLateInLifetime",
    "CertboundConnectionsRefused",
    "CertboundHandshakesPilingUp",
    "CertboundWorkerRestarting",
    "CertboundConfigReloadFailed",
    "CertboundServingCertExpiringSoon",
    "CertboundJwksRefreshFailing",
    "CertboundUpstreamErrorRatioHigh",
    "CertboundTokenReplayedByManyCertificates",
    "CertboundDpopReplayCacheFailing",
}
SEVERITIES = {"critical", "warning", "info"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_TOKEN = re.compile(r"certbound_[a-z_]+")
# prometheus-client's process collector: one series per process (the `pid` label) with several
# workers (proxy/exposition.py), the process's own without.
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}
# `name{matchers}` selectors; matchers may contain Grafana variables like "$namespace".
SELECTOR = re.compile(r"(certbound_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def base_metric(token: str) -> str:
    """`certbound_overhead_seconds_bucket` -> `certbound_overhead_seconds` (histograms only)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = token.removesuffix(suffix)
        if base != token and CONTRACT_METRICS.get(base, {}).get("type") == "histogram":
            return base
    return token


def unknown_metrics(expr: str) -> set[str]:
    return {t for t in METRIC_TOKEN.findall(expr) if base_metric(t) not in CONTRACT_METRICS}


def bad_label_matchers(expr: str) -> list[str]:
    """Equality matchers on labels certbound does not export, or with values outside the
    contract's closed sets."""
    problems = []
    for name, body in SELECTOR.findall(expr):
        labels = CONTRACT_METRICS.get(base_metric(name), {}).get("labels", {})
        for label, op, value in MATCHER.findall(body):
            if label in TARGET_LABELS or label == "le":
                continue
            if label not in labels:
                problems.append(f"{name}: label {label!r} is not in the contract")
            elif op == "=" and labels[label] is not None and value not in labels[label]:
                problems.append(f"{name}: {label}={value!r} is not in the contract's set")
    return problems


def load_alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS_FILE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list), "no `groups:` list"
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def as_plain_promql(expr: str) -> str:
    """Replace Grafana's template variables so promtool can parse the expression."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{?[a-zA-Z_]+\}?", ".*", expr)


# --------------------------------------------------------------------------------- promtool


def test_promtool_is_installed() -> None:
    proc = run_promtool("--version")
    assert proc.returncode == 0, proc.stderr
    assert "promtool" in (proc.stdout + proc.stderr)


def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", str(ALERTS_FILE.relative_to(ROOT)))
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}\n{proc.stderr}"
    assert "SUCCESS" in proc.stdout


@pytest.mark.slow
def test_promtool_unit_tests() -> None:
    proc = run_promtool("test", "rules", str(ALERTS_TEST_FILE.relative_to(ROOT)))
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}\n{proc.stderr}"
    assert "SUCCESS" in proc.stdout


# ------------------------------------------------------------------------------------ alerts


def test_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in load_alert_rules()}
    assert REQUIRED_ALERTS <= names, f"missing alerts: {sorted(REQUIRED_ALERTS - names)}"
    assert all(name.startswith("Certbound") for name in names), names


def test_every_alert_has_annotations_and_severity() -> None:
    rules = load_alert_rules()
    assert rules
    for rule in rules:
        name = rule["alert"]
        annotations = rule.get("annotations") or {}
        for key in ("summary", "description"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key} annotation"
        severity = (rule.get("labels") or {}).get("severity")
        assert severity in SEVERITIES, f"{name}: severity label {severity!r} not in {SEVERITIES}"


def test_alert_expressions_use_contract_metrics_and_labels() -> None:
    for rule in load_alert_rules():
        expr = rule["expr"]
        assert METRIC_TOKEN.search(expr), f"{rule['alert']}: names no certbound metric"
        assert not unknown_metrics(expr), f"{rule['alert']}: {unknown_metrics(expr)}"
        assert not bad_label_matchers(expr), f"{rule['alert']}: {bad_label_matchers(expr)}"


def test_the_operations_page_alert_table_lists_exactly_the_rules() -> None:
    page = (ROOT / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `(Certbound[A-Za-z]+)` \|", page, re.M))
    names = {rule["alert"] for rule in load_alert_rules()}
    assert table == names, f"only in docs: {table - names}; only in rules: {names - table}"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    doc = yaml.safe_load(ALERTS_TEST_FILE.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in load_alert_rules()}
    assert names - firing == set(), f"alerts without a firing test: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts without a not-firing test: {sorted(names - quiet)}"


# --------------------------------------------------------------------------------- dashboard


def test_dashboard_parses_and_has_panels() -> None:
    dash = load_dashboard()
    assert dash.get("title")
    assert dash.get("uid")
    assert len(dashboard_exprs()) >= 10


def test_dashboard_uses_datasource_variable() -> None:
    dash = load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "datasource" in variables, "no `datasource` template variable"
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    def check(where: str, ds: Any) -> None:
        if ds is None:
            return
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        assert uid in ("${datasource}", "$datasource"), f"{where}: hard-coded datasource {ds!r}"

    for panel in iter_panels(dash["panels"]):
        check(f"panel {panel.get('title')!r}", panel.get("datasource"))
        for target in panel.get("targets", []):
            check(f"panel {panel.get('title')!r} target", target.get("datasource"))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            check(f"variable {var['name']!r}", var.get("datasource"))


def test_dashboard_panel_ids_are_unique() -> None:
    """Grafana's view and edit links (and the alert annotations that link panels) name a
    panel by id: a repeated id opens whichever comes first."""
    ids = [panel.get("id") for panel in iter_panels(load_dashboard()["panels"])]
    assert None not in ids, "a panel without an id"
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"panel ids used more than once: {repeated}"


def test_dashboard_shows_process_memory_and_cpu_per_pod() -> None:
    exprs = [expr for _, expr in dashboard_exprs()]
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert any(name in e and "sum by (namespace, pod)" in e for e in exprs), name


def test_dashboard_expressions_use_contract_metrics_and_labels() -> None:
    for title, expr in dashboard_exprs():
        names_process = any(name in expr for name in PROCESS_METRICS)
        assert METRIC_TOKEN.search(expr) or names_process, f"panel {title!r}: names no metric"
        assert not unknown_metrics(expr), f"panel {title!r}: {unknown_metrics(expr)}"
        assert not bad_label_matchers(expr), f"panel {title!r}: {bad_label_matchers(expr)}"


def test_dashboard_shows_every_contract_metric() -> None:
    used = {base_metric(t) for _, expr in dashboard_exprs() for t in METRIC_TOKEN.findall(expr)}
    missing = set(CONTRACT_METRICS) - used
    assert not missing, f"contract metrics not on the dashboard: {sorted(missing)}"


def test_dashboard_has_required_views() -> None:
    exprs = [expr for _, expr in dashboard_exprs()]
    for q in ("0.5", "0.9", "0.99"):
        for hist in ("certbound_overhead_seconds", "certbound_upstream_duration_seconds"):
            assert any(f"histogram_quantile({q}," in e and f"{hist}_bucket" in e for e in exprs), (
                f"no p{q} panel for {hist}"
            )
    assert any("by (outcome, reason)" in e and "certbound_requests_total" in e for e in exprs)
    assert any("by (kind)" in e and "certbound_upstream_errors_total" in e for e in exprs)


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """Wrap every panel expression in a recording rule and let promtool parse it."""
    rules = [
        {"record": f"certbound_dashboard:panel_{i}", "expr": as_plain_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    rules_file = tmp_path / "dashboard-exprs.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(rules_file))
    assert proc.returncode == 0, f"invalid PromQL in the dashboard:\n{proc.stdout}\n{proc.stderr}"


def test_dashboard_dpop_panel_lists_every_dpop_reason() -> None:
    """The DPoP row's refusal panel enumerates its reasons: a new DPoP reason must join it."""
    (expr,) = [e for title, e in dashboard_exprs() if title == "DPoP refusals by reason"]
    found = re.search(r'reason=~"([^"]*)"', expr)
    assert found, expr
    listed = set(found.group(1).split("|"))
    reasons = {r.value for r in Reason}
    assert listed <= reasons, f"not reasons: {sorted(listed - reasons)}"
    dpop = {r for r in reasons if "dpop" in r} | {"wrong_binding_kind", "replay_cache_unavailable"}
    assert listed == dpop, f"DPoP reasons missing from the panel: {sorted(dpop - listed)}"

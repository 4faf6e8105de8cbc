"""The Grafana dashboard certbound ships (deploy/grafana), read as its panels and queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD_FILE = (
    Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "certbound-dashboard.json"
)


def load_dashboard() -> dict[str, Any]:
    dash = json.loads(DASHBOARD_FILE.read_text())
    assert isinstance(dash, dict)
    return dash


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))  # rows (collapsed ones nest panels)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    return [
        (panel.get("title", "?"), target["expr"])
        for panel in iter_panels(load_dashboard()["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]

"""The caps certbound derives from a memory budget (proxy/capacity.py): pure arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.capacity import (
    BUDGET_SHARE,
    CONNECTION_BYTES,
    HANDSHAKE_BYTES,
    MIB,
    SUPERVISOR_BYTES,
    WORKER_BASELINE_BYTES,
    connection_caps,
)
from proxy.config import ConfigError, load_settings
from proxy.settings import ListenSettings


def worst_case(workers: int, max_connections: int, max_handshakes: int, body_bytes: int) -> int:
    """Every worker at both caps with its buffered bodies' total, plus the supervisor with
    more than one."""
    per_worker = (
        WORKER_BASELINE_BYTES
        + max_handshakes * HANDSHAKE_BYTES
        + (max_connections - max_handshakes) * CONNECTION_BYTES
        + body_bytes
    )
    return workers * per_worker + (SUPERVISOR_BYTES if workers > 1 else 0)


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("budget_mib", [256, 512, 1024, 4096])
def test_a_flood_at_every_cap_fits_the_planned_share_of_the_budget(
    workers: int, budget_mib: int
) -> None:
    caps = connection_caps(ListenSettings(), workers, budget_mib * MIB)
    if caps.is_budget_too_small:
        assert (workers, budget_mib) == (4, 256)  # the only combination here that is
        return
    assert caps.body_bytes > 0
    assert worst_case(workers, caps.max_connections, caps.max_handshakes, caps.body_bytes) <= (
        budget_mib * MIB * BUDGET_SHARE
    )
    assert caps.max_handshakes <= caps.max_connections


def test_the_chart_default_budget_gives_the_figures_the_docs_state() -> None:
    caps = connection_caps(ListenSettings(), 1, 256 * MIB)
    assert (caps.max_connections, caps.max_handshakes) == (2056, 1000)
    assert caps.body_bytes == 16 * MIB


def test_configured_caps_below_the_budget_are_kept_and_no_budget_keeps_them_all() -> None:
    small = ListenSettings(max_connections=500, max_handshakes=100)
    kept = connection_caps(small, 1, 4096 * MIB)
    assert (kept.max_connections, kept.max_handshakes) == (500, 100)
    unbounded = connection_caps(ListenSettings(), 1, 0)
    assert (unbounded.max_connections, unbounded.max_handshakes) == (10000, 1000)
    assert unbounded.body_bytes == 0  # no total without a budget


def test_a_budget_too_small_for_the_workers_is_flagged_and_still_serves() -> None:
    caps = connection_caps(ListenSettings(), 4, 256 * MIB)
    assert caps.is_budget_too_small
    assert caps.max_connections >= 64 and caps.max_handshakes >= 16


def test_bad_cap_keys_are_refused_with_their_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "listen: {max_handshakes: 0, handshake_timeout_seconds: 120, memory_budget_mib: 16}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    text = "\n".join(caught.value.problems)
    for key in (
        "listen.max_handshakes",
        "listen.handshake_timeout_seconds",
        "listen.memory_budget_mib",
    ):
        assert key in text

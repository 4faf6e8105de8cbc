"""The refetch budget for unknown kids: a burst, then one per interval (a pure token bucket)."""

from __future__ import annotations

from dataclasses import replace

from proxy.config.validate import validate
from proxy.settings import Settings, TokenSettings
from proxy.tokens.refetch import REFETCH_BURST, RefetchBudget


def test_a_quiet_budget_allows_the_burst_at_once_then_one_per_interval() -> None:
    budget = RefetchBudget(5.0, now=100.0)
    for _ in range(int(REFETCH_BURST)):
        assert budget.wait(100.0) == 0.0
        budget.take(100.0)
    assert budget.wait(100.0) == 5.0
    assert budget.wait(102.0) == 3.0
    assert budget.wait(105.0) == 0.0
    budget.take(105.0)
    assert budget.wait(105.0) == 5.0


def test_the_budget_refills_to_the_burst_and_no_further() -> None:
    budget = RefetchBudget(1.0, now=0.0)
    budget.take(0.0)
    assert budget.wait(3600.0) == 0.0
    for _ in range(int(REFETCH_BURST)):
        budget.take(3600.0)
    assert budget.wait(3600.0) == 1.0


def test_an_interval_of_zero_never_waits() -> None:
    budget = RefetchBudget(0.0, now=0.0)
    for _ in range(10):
        budget.take(0.0)
    assert budget.wait(0.0) == 0.0


def test_a_refetch_interval_over_a_minute_is_a_config_error() -> None:
    tokens = TokenSettings(issuer="https://idp.example", audience=("a",), jwks_uri="https://x/j")
    settings = replace(Settings(), tokens=replace(tokens, jwks_min_refetch_seconds=61))
    problems = validate(settings)
    assert any(p.startswith("tokens.jwks_min_refetch_seconds: must be 0 to 60") for p in problems)

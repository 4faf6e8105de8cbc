"""The record of the checks one request went through, for `certbound explain`. Not a log and
not a metric: nothing is recorded unless a caller hands a Trace to the checks.

The checks take `trace: Trace | None`, as httpcore's request extensions carry a trace
callback: on the request path it is None, and each hook is one `if trace is not None` with no
allocation. A check records itself just before it decides (`trace.check(...)`), with the
values it compares; when a check refuses, the AuthError leaves the checks and the trace's last
step is the one that refused. Facts never hold a token, a proof or a private key member.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.errors import AuthError


@dataclass(slots=True)
class Step:
    """One check, named as explain prints it ("htu", "cnf.jkt", "route"), with what it saw."""

    check: str
    facts: dict[str, object] = field(default_factory=dict)
    reported: AuthError | None = None  # a refusal that report_only let through


class Trace:
    """The steps of one decision, in the order they were taken."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def check(self, name: str, **facts: object) -> None:
        """The check `name` is about to decide, on these values."""
        self.steps.append(Step(name, facts))

    def note(self, **facts: object) -> None:
        """What the current check found (a thumbprint it computed, the route it matched)."""
        self.steps[-1].facts.update(facts)

    def reported(self, refusal: AuthError) -> None:
        """The current check refused, and binding.mode report_only let the request go on."""
        self.steps[-1].reported = refusal

    @property
    def last(self) -> Step | None:
        """The step that refused, when the checks raised; else the last one taken."""
        return self.steps[-1] if self.steps else None

"""How `certbound explain` prints a trace (proxy/trace.py): a line per check, ok or FAIL with
the proxy's own reason and wording, what the check compared, and the fix for the reason
(fixes.py). The words for each check are in steps.py (the pipeline's) and proof_steps.py
(dpop.verify_proof's and the rest of a DPoP binding); nothing here decides.

Nothing is printed that would let a reader use the credentials: no token, no proof, no
signature, no private key member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import AuthError
from proxy.settings import Settings, trusted_issuers
from proxy.tools.fixes import fix_for
from proxy.trace import Step

Out = Callable[[str], None]

# The sections of the printout; a check not named here belongs to the key binding (DPoP).
_SECTIONS = {
    "target": "",
    "certificate": "",
    "route": "2. route policy",
    "subject": "2. route policy",
    "credentials": "3. token (its iss picks the issuer whose keys and rules judge it)",
    "token": "3. token (its iss picks the issuer whose keys and rules judge it)",
    "policy": "5. permission",
}
_BINDING = "4. key binding"


@dataclass
class View:
    """What explain knows besides the trace: the settings, and what it read for display."""

    settings: Settings
    token_lines: list[str] = field(default_factory=list)  # the token's header and claims
    request_line: str = ""  # the method and URL the client used, when a proof is given
    proof_lines: list[str] = field(default_factory=list)  # the proof's header and claims
    proof_header: dict[str, Any] = field(default_factory=dict)
    keys_note: str = ""  # why the issuer's keys did not load, when they did not
    nonce_note: str = ""  # why explain cannot check dpop.nonce, when it cannot
    has_token: bool = True
    is_introspected: bool = False  # the proxy would introspect the token; explain does not


def label(name: str) -> str:
    """A check's name as the first column (12 wide, one space at least)."""
    return f"   {name:<11} "


class Printer:
    """Prints steps in order; `facts` gathers what every step so far saw, since a line may
    need an earlier step's value (htu is compared with the URL the request URL step built)."""

    def __init__(
        self,
        view: View,
        out: Out,
        renderers: Mapping[str, Render] | None = None,
        *,
        sections: bool = True,
    ) -> None:
        self.view, self.out = view, out
        self._renderers = renderers or {}
        self.facts: dict[str, object] = {}
        self._sections = sections
        self._section = ""

    def step(self, step: Step, refusal: AuthError | None) -> None:
        """Print one step; `refusal`: why it refused (the checks stopped there), or None."""
        self.facts.update(step.facts)
        failure = refusal or step.reported
        section = _SECTIONS.get(step.check, _BINDING) if self._sections else ""
        if section and section != self._section and self._wants_section(step):
            self._section = section
            self.out(section)
            if step.check in ("credentials", "token"):
                for line in self.view.token_lines:
                    self.out(line)
        render = self._renderers.get(step.check, plain)
        render(self, step, failure)
        if step.reported is not None:
            self.out(
                f"   {step.reported.reason.value}: would be refused, but binding.mode is "
                "report_only"
            )

    def _wants_section(self, step: Step) -> bool:
        return not (step.check == "policy" and not step.facts.get("is_enabled"))

    def ok(self, name: str, text: str) -> None:
        self.out(f"{label(name)}ok: {text}")

    def detail(self, text: str) -> None:
        self.out(f"   {'':<12}{text}")

    def fail(
        self, name: str, failure: AuthError, details: list[str] | None = None, **facts: object
    ) -> None:
        """The FAIL line with the proxy's reason and wording, what was compared, the fix."""
        self.out(f"{label(name)}FAIL {failure.reason.value}: {failure.description}")
        for line in details or ():
            self.detail(line)
        self.out(f"   fix: {fix_for(failure.reason, name, {**self._known(), **facts})}")

    def _known(self) -> dict[str, object]:
        settings = self.view.settings
        return {
            **self.facts,
            "dpop_algorithms": " ".join(settings.dpop.algorithms),
            "issuers": ", ".join(f"{e.name}={e.issuer}" for e in trusted_issuers(settings.tokens)),
            "audiences": ", ".join(a for e in trusted_issuers(settings.tokens) for a in e.audience),
        }


def plain(p: Printer, step: Step, failure: AuthError | None) -> None:
    """A check with nothing to show but a refusal."""
    if failure is not None:
        p.fail(step.check, failure)


Render = Callable[[Printer, Step, AuthError | None], None]

"""How `certbound explain` prints each step the pipeline records (proxy/checks/pipeline.py):
the target, the certificate, the route, the token, the binding and the permission. Words
only: every verdict printed here is one the checks reached."""

from __future__ import annotations

import json

from proxy.checks.policy import Route
from proxy.errors import AuthError
from proxy.tokens.claims import TokenClaims
from proxy.tools.printer import Printer, Render, label, plain
from proxy.trace import Step
from proxy.trust.identity import ClientIdentity


def _route(p: Printer, step: Step, failure: AuthError | None) -> None:
    facts = step.facts
    if not facts.get("is_enabled"):
        p.out("   no routes configured: any valid bound token is allowed")
        return
    if failure is not None:
        p.fail("route", failure)
        return
    method, path, route = facts["method"], facts["path"], facts["route"]
    if not isinstance(route, Route):
        p.out(f"   {method} {path}: no rule matches")
        p.out(f"   unmatched requests: {facts['unmatched']}")
        return
    p.out(
        f"   {method} {path}: matches rule path={route.path} "
        f"methods={sorted(route.methods) or 'any'} scopes={sorted(route.scopes)} "
        f"clients={sorted(route.clients) or 'any'} binding={route.binding} "
        f"public={route.public}"
    )


def _subject(p: Printer, step: Step, failure: AuthError | None) -> None:
    listed = step.facts["subjects"]
    subjects = ", ".join(listed) if isinstance(listed, list) else "?"
    if failure is not None:
        p.fail("subject", failure, [f"route subjects: {subjects}"])
        return
    identity = step.facts["identity"]
    assert isinstance(identity, ClientIdentity)
    p.ok("subject", f"{identity.subject} (or a URI SAN of it) is among {subjects}")


def _credentials(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:
        p.fail("credentials", failure)
        return
    p.ok("credentials", f"Authorization: {step.facts['scheme']}")


def _token(p: Printer, step: Step, failure: AuthError | None) -> None:
    if p.view.keys_note:
        p.out(f"   keys        cannot load them: {p.view.keys_note}")
    if failure is not None and p.view.is_introspected:
        p.out("   not a JWT the proxy verifies itself: it would be introspected (RFC 7662);")
        p.out("   explain does not call the introspection endpoint, so it cannot say more")
        return
    if failure is not None:
        details = []
        if failure.issuer:
            details.append(f"judged by the configured issuer {failure.issuer}")
        p.fail("token", failure, details)
        return
    claims = step.facts["claims"]
    assert isinstance(claims, TokenClaims)
    where = ""
    if step.facts.get("is_remembered"):
        where = " (remembered for this connection)"
    elif step.facts.get("is_cached"):
        where = " (from the verified-token cache)"
    p.ok(
        "token",
        f"issuer {claims.issuer_name} ({claims.issuer}): sub={claims.subject} "
        f"client_id={claims.client_id or '-'}{where}",
    )


def _cnf(p: Printer, step: Step, failure: AuthError | None) -> None:
    cnf = step.facts["cnf"]
    shown = json.dumps(cnf, sort_keys=True)
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if jkt is not None:
        also = " and to a certificate" if isinstance(cnf, dict) and "x5t#S256" in cnf else ""
        p.out(f"{label('cnf')}{shown}: DPoP-bound, RFC 9449{also}")
    else:
        p.out(f"{label('cnf')}{shown}: no jkt, so not DPoP-bound")
    if failure is None:
        return
    details = []
    if failure.reason.value == "dpop_token_as_bearer":
        details = [
            "it passes only as Authorization: DPoP with a DPoP proof header for this request;",
            "give that proof (--dpop PROOF --url URL) to check it. Sent as Bearer it is refused.",
        ]
    p.fail("cnf", failure, details)


def _cnf_x5t(p: Printer, step: Step, failure: AuthError | None) -> None:
    cnf = p.facts.get("cnf")
    expected = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    identity = step.facts["identity"]
    p.out(f"   token cnf.x5t#S256    {expected if expected is not None else '(none)'}")
    if isinstance(identity, ClientIdentity):
        p.out(f"   presented x5t#S256    {identity.thumbprint}")
    else:
        p.out("   presented x5t#S256    (no certificate)")
    if failure is not None:
        p.fail("cnf.x5t#S256", failure)
        return
    p.out("   bound to this certificate" if step.facts.get("is_bound") else "   unbound (allowed)")


def _policy(p: Printer, step: Step, failure: AuthError | None) -> None:
    route = step.facts["route"]
    if failure is None:
        if step.facts.get("is_enabled"):
            p.out("   allowed")
        return
    scopes = " ".join(sorted(route.scopes)) if isinstance(route, Route) else ""
    details = []
    claims = p.facts.get("claims")
    if scopes and isinstance(claims, TokenClaims):
        details.append(f"route scopes: {scopes}; token scope: {claims.scope or '(none)'}")
    p.fail("policy", failure, details, route_scopes=scopes)


STEPS: dict[str, Render] = {
    "target": plain,
    "certificate": plain,
    "route": _route,
    "subject": _subject,
    "credentials": _credentials,
    "token": _token,
    "cnf": _cnf,
    "cnf.x5t#S256": _cnf_x5t,
    "policy": _policy,
}

"""How `certbound explain` prints the steps the checks recorded (proxy/trace.py): a line per
check, ok or FAIL with the proxy's own reason, what the check compared, and the fix
(fixes.py). Words only: every verdict printed here is one the checks reached.

Nothing is printed that would let a reader use the credentials: no token, no proof, no
signature, no private key member.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from proxy.checks.policy import Route
from proxy.errors import AuthError
from proxy.settings import Settings, trusted_issuers
from proxy.tokens.claims import TokenClaims
from proxy.tokens.dpop import ASYMMETRIC_ALGORITHMS, PRIVATE_MEMBERS, normalize_url
from proxy.tools.fixes import fix_for
from proxy.trace import Step
from proxy.trust.identity import ClientIdentity

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
    return f"   {name:<11} "


class Printer:
    """Prints steps in order; `facts` gathers what every step so far saw, since a line may
    need an earlier step's value (htu is compared with the URL the request URL step built)."""

    def __init__(self, view: View, out: Out, *, sections: bool = True) -> None:
        self.view, self.out = view, out
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
        render = _RENDERERS.get(step.check, _plain)
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


def _plain(p: Printer, step: Step, failure: AuthError | None) -> None:
    """A check with nothing to show but a refusal."""
    if failure is not None:
        p.fail(step.check, failure)


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


def _dpop_header(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:
        p.fail("DPoP header", failure, [f"{step.facts['count']} DPoP headers"])


def _request_url(p: Printer, step: Step, failure: AuthError | None) -> None:
    if p.view.request_line:
        p.out(p.view.request_line)
    if failure is not None:
        hosts = step.facts["hosts"]
        p.fail("request URL", failure, [f"Host headers: {hosts}"])


def _how(facts: dict[str, object]) -> str:
    """How the proxy built the URL htu is compared with (pipeline.request_url's facts)."""
    path = facts.get("request_path")
    if facts.get("base"):
        return f"dpop.external_base_url + path {path}; the Host header is not used"
    hosts = facts.get("hosts")
    host = hosts[0] if isinstance(hosts, list) and hosts else "?"
    return f"https:// + Host header {host} + path {path}; no query"


def _length(p: Printer, step: Step, failure: AuthError | None) -> None:
    length, limit = step.facts["length"], step.facts["limit"]
    if failure is not None:
        p.fail("length", failure, [f"{length} characters, at most {limit}"])
        return
    p.ok("length", f"{length} characters (at most {limit})")


def _jws_form(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:
        p.fail("JWS form", failure)
        return
    p.ok("JWS form", "compact JWS")
    for line in p.view.proof_lines:
        p.out(line)


def _typ(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:
        p.fail("typ", failure, [f"typ is {json.dumps(step.facts['typ'])}"])
        return
    p.ok("typ", "dpop+jwt")


def _alg(p: Printer, step: Step, failure: AuthError | None) -> None:
    alg = step.facts["alg"]
    allowed = " ".join(p.view.settings.dpop.algorithms)
    if failure is None:
        p.ok("alg", f"{alg} (dpop.algorithms: {allowed})")
        return
    asymmetric = isinstance(alg, str) and alg in ASYMMETRIC_ALGORITHMS
    why = (
        f"{alg} is not in dpop.algorithms ({allowed})"
        if asymmetric
        else f"{json.dumps(alg)} is not an asymmetric algorithm: a proof shows possession "
        "of a private key, so none and HS* never pass"
    )
    p.fail("alg", failure, [why], or_add_it=", or add it to dpop.algorithms" if asymmetric else "")


def _kind(facts: dict[str, Any]) -> str:
    return " ".join(str(facts[m]) for m in ("kty", "crv") if isinstance(facts.get(m), str))


def _jwk(p: Printer, step: Step, failure: AuthError | None) -> None:
    members = step.facts["members"]
    if failure is not None:
        private = sorted(PRIVATE_MEMBERS & set(members)) if isinstance(members, list) else []
        details = [f"private members present: {', '.join(private)} (values not shown)"]
        p.fail("jwk", failure, details if private else [])
        return
    jwk = p.view.proof_header.get("jwk")
    kind = _kind(jwk) if isinstance(jwk, dict) else ""
    p.ok("jwk", f"public key ({kind or 'no kty'})")


def _thumbprint(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:
        kty = json.dumps(step.facts.get("kty"))
        p.fail("thumbprint", failure, [f"kty {kty}: RFC 7638 needs EC (crv, x, y), RSA (e, n)"])
        return
    p.ok("thumbprint", f"{step.facts['thumbprint']} (RFC 7638, SHA-256)")


def _key(p: Printer, step: Step, failure: AuthError | None) -> None:
    kind, alg = _kind(step.facts) or "key", step.facts["alg"]
    if failure is not None:
        p.fail("key", failure, [f"a {kind} key cannot verify {alg}"])
        return
    p.ok("key", f"{kind} fits {alg}")


def _signature(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:
        error = step.facts.get("error")
        p.fail("signature", failure, [f"PyJWT: {error}"] if error else [])
        return
    p.ok("signature", "by the jwk in the header")


def _jti(p: Printer, step: Step, failure: AuthError | None) -> None:
    jti = step.facts["jti"]
    if failure is not None:
        p.fail("jti", failure, [f"jti is {json.dumps(jti)[:80]}"])
        return
    p.ok("jti", f"present ({len(str(jti))} characters)")


def _iat(p: Printer, step: Step, failure: AuthError | None) -> None:
    iat = step.facts["iat"]
    if failure is not None:
        p.fail("iat", failure, [f"iat is {json.dumps(iat)[:80]}"])
        return
    assert isinstance(iat, int | float)
    try:
        when = dt.datetime.fromtimestamp(iat, dt.UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        when = "not a representable time"
    p.ok("iat", f"{iat} ({when})")


def _htm(p: Printer, step: Step, failure: AuthError | None) -> None:
    htm, method = step.facts["htm"], step.facts["method"]
    if failure is not None:
        p.fail("htm", failure, [f"proof {json.dumps(htm)}, request {method}"], method=method)
        return
    p.ok("htm", str(method))


def _htu(p: Printer, step: Step, failure: AuthError | None) -> None:
    htu, url = step.facts["htu"], str(step.facts["url"])
    expected = normalize_url(url)
    how = _how(p.facts)
    if failure is None:
        p.ok("htu", str(normalize_url(str(htu))))
        p.detail(f"request  {expected}  ({how})")
        return
    presented = normalize_url(htu) if isinstance(htu, str) else None
    shape = (
        "dpop.external_base_url + <path>"
        if p.view.settings.dpop.external_base_url
        else "https://<Host header><path>"
    )
    p.fail(
        "htu",
        failure,
        [
            f"proof    {presented or _unusable_htu(htu)}",
            f"request  {expected or url + ' (unusable)'}  ({how})",
        ],
        expected_htu=expected or shape,
        htu_shape=shape,
        htu_json=json.dumps(htu),
    )


def _iat_age(p: Printer, step: Step, failure: AuthError | None) -> None:
    facts = step.facts
    iat, now = float(facts["iat"]), float(facts["now"])  # type: ignore[arg-type]
    max_age, leeway = float(facts["max_age"]), float(facts["leeway"])  # type: ignore[arg-type]
    age = now - iat
    window = f"at most {max_age:g} s + {leeway:g} s leeway"
    if failure is None:
        p.ok("iat age", f"{age:.0f} s old ({window})")
    elif age > 0:
        p.fail(
            "iat age",
            failure,
            [f"{age:.0f} s old, {window} (measured now: a proof captured earlier ages too)"],
        )
    else:
        p.fail("iat age", failure, [f"{-age:.0f} s in the future, at most {leeway:g} s allowed"])


def _ath(p: Printer, step: Step, failure: AuthError | None) -> None:
    ath, expected = step.facts["ath"], step.facts["expected"]
    if not p.view.has_token:
        p.out(f"{label('ath')}not checked: no token given (it must be base64url SHA-256 of it)")
        return
    if failure is None:
        p.ok("ath", f"SHA-256 of the token ({expected})")
        return
    p.fail(
        "ath",
        failure,
        [f"proof ath     {json.dumps(ath)}", f"token's hash  {expected}"],
        ath_case="; this proof has none" if ath is None else "; it was made for another token",
    )


def _cnf_jkt(p: Printer, step: Step, failure: AuthError | None) -> None:
    jkt, thumbprint = step.facts["jkt"], step.facts["thumbprint"]
    if failure is not None:
        p.fail("cnf.jkt", failure, [f"token names {jkt}", f"proof key   {thumbprint}"])
        return
    p.ok("cnf.jkt", f"the token names the proof's key {thumbprint}")


def _nonce(p: Printer, step: Step, failure: AuthError | None) -> None:
    nonce = step.facts["nonce"]
    shown = json.dumps(nonce)[:120] if nonce is not None else "none"
    if failure is not None:
        p.out(f"{label('nonce')}FAIL {failure.reason.value}: {failure.description} ({shown})")
        p.out(f"   fix: {fix_for(failure.reason, 'nonce', p.facts)}")
        return
    if not step.facts["is_required"]:
        if p.view.nonce_note:
            p.out(f"{label('nonce')}{shown}: not checked: {p.view.nonce_note}")
        elif nonce is not None:
            p.out(f"{label('nonce')}{shown}: not checked (dpop.nonce is false)")
        return
    if step.facts.get("is_renewed"):
        p.ok("nonce", "last period's nonce; the answer would carry a new DPoP-Nonce")
    else:
        p.ok("nonce", "the current nonce")


def replay_lines(settings: Settings, window: float) -> list[str]:
    """What explain cannot check: whether the proxy saw this proof's jti before."""
    where = (
        "in Redis (dpop.replay_cache), shared by the replicas"
        if settings.dpop.replay_cache
        else "in each proxy process"
    )
    return [
        f"{label('replay')}not checked: the proxy remembers each jti for {window:g} s {where};",
        f"   {'':<12}explain does not consult that, so a proof sent before is refused",
        f"   {'':<12}(dpop_replayed) though it passes here",
    ]


def _replay(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:  # not from explain's own, empty memory; but say so if it is
        p.fail("replay", failure)
        return
    for line in replay_lines(p.view.settings, float(step.facts["window"])):  # type: ignore[arg-type]
        p.out(line)
    cnf = p.facts.get("cnf")
    if isinstance(cnf, dict) and "x5t#S256" in cnf:
        p.out("   the token's cnf has x5t#S256 too: the certificate must match as well")
    else:
        p.out("   bound to this DPoP key")


def _replay_cache(p: Printer, step: Step, failure: AuthError | None) -> None:
    if failure is not None:
        p.fail("replay cache", failure)
        return
    p.ok("replay cache", f"first use of this jti ({step.facts['where']})")


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


def _unusable_htu(htu: object) -> str:
    """Why dpop.normalize_url refused the proof's htu, in words."""
    if not isinstance(htu, str):
        return f"{json.dumps(htu)} (no htu string in the proof)"
    try:
        parts = urlsplit(htu)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"{htu} (not a URL)"
    if parts.query or parts.fragment or "?" in htu or "#" in htu:
        return f"{htu} (has a query or fragment: htu must not, RFC 9449 §4.2)"
    if parts.scheme.lower() != "https":
        return f"{htu} (not https)"
    return f"{htu} (no host)"


_RENDERERS: dict[str, Callable[[Printer, Step, AuthError | None], None]] = {
    "target": _plain,
    "certificate": _plain,
    "route": _route,
    "subject": _subject,
    "credentials": _credentials,
    "token": _token,
    "cnf": _cnf,
    "DPoP header": _dpop_header,
    "request URL": _request_url,
    "length": _length,
    "JWS form": _jws_form,
    "typ": _typ,
    "alg": _alg,
    "jwk": _jwk,
    "thumbprint": _thumbprint,
    "key": _key,
    "signature": _signature,
    "jti": _jti,
    "iat": _iat,
    "htm": _htm,
    "htu": _htu,
    "iat age": _iat_age,
    "ath": _ath,
    "cnf.jkt": _cnf_jkt,
    "nonce": _nonce,
    "replay": _replay,
    "replay cache": _replay_cache,
    "cnf.x5t#S256": _cnf_x5t,
    "policy": _policy,
}

"""How `certbound explain` prints a DPoP binding's steps: the proof header and the URL htu is
compared with (the pipeline's), each check of dpop.verify_proof, then cnf.jkt, the nonce and
the replay window. Words only: every verdict printed here is one the checks reached."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlsplit

from proxy.errors import AuthError
from proxy.settings import Settings
from proxy.tokens.dpop import ASYMMETRIC_ALGORITHMS, PRIVATE_MEMBERS, normalize_url
from proxy.tools.fixes import fix_for
from proxy.tools.printer import Printer, Render, label
from proxy.trace import Step


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


PROOF_STEPS: dict[str, Render] = {
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
}

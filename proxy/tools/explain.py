"""`certbound explain`: walk one request (a client certificate, a token, a DPoP proof: whatever
the operator has of it) through the decision, step by step.

For the day a client swears its token is right. The decision is the proxy's own: the request is
put to a Pipeline built from the configuration as `certbound run` builds it, with a Trace
(proxy/trace.py) that records each check it takes; printer.py prints that record, and fixes.py
says what to do about the refusal. Nothing here decides.

No network traffic except fetching the keys of the token's issuer; opaque tokens are not
introspected (that would spend the token at the authorization server), and the DPoP replay
cache is not consulted (that would need the proxy's memory or its Redis). Nothing is printed
that would let a reader use the credentials: no token, no proof, no signature, no private key
member.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.checks.pipeline import Admitted, Pipeline, Seen
from proxy.checks.request import Request as CheckedRequest
from proxy.config import read_nonce_key
from proxy.errors import AuthError, challenge
from proxy.settings import Settings, trusted_issuers
from proxy.tokens import unverified
from proxy.tokens.dpop import PRIVATE_MEMBERS, verify_proof
from proxy.tokens.issuers import Issuers, read_issuer
from proxy.tokens.jwks import KeySetError
from proxy.tokens.jwt import JWTVerifier, TokenCache
from proxy.tools.printer import Printer, View, label
from proxy.tools.proof_steps import PROOF_STEPS, replay_lines
from proxy.tools.steps import STEPS
from proxy.trace import Trace
from proxy.trust.certcheck import check_certificate
from proxy.trust.identity import ClientIdentity, identity_from_der

Out = Callable[[str], None]


class UsageError(ValueError):
    """A question explain cannot answer as asked (the command line exits 2)."""


@dataclass(frozen=True, slots=True)
class Request:
    """What the operator has of one request. Only the method is always known."""

    certificate: x509.Certificate | None = None
    token: str = ""
    method: str = "GET"
    target: str = "/"  # the path (and query) the proxy sees
    proof: str = ""  # the DPoP header's value
    url: str = ""  # the URL the client used: what htu must name


def request_target(settings: Settings, url: str, path: str | None) -> str:
    """The request-target the proxy sees: `path` when given (an ingress may rewrite it), else
    the path and query of `url`, less the path prefix of dpop.external_base_url, which names
    what clients use in front of an ingress that strips it."""
    if path is not None:
        return path
    if not url:
        return "/"
    parts = _split_url(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    prefix = urlsplit(settings.dpop.external_base_url).path.rstrip("/")
    if prefix and (target == prefix or target.startswith((prefix + "/", prefix + "?"))):
        target = target[len(prefix) :]
        target = target if target.startswith("/") else "/" + target
    return target


def _split_url(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise UsageError(f"--url {url!r} is not a URL") from None
    if not parts.scheme or not parts.hostname:
        raise UsageError(f"--url must be absolute, like https://orders.example/orders, got {url!r}")
    return parts


async def explain(settings: Settings, request: Request, out: Out) -> int:
    """Print each step; return 0 if the request would be forwarded, 1 if refused."""
    is_accepted, identity = _print_certificate(settings, request, out)
    if not is_accepted:
        return 1
    view = View(settings, has_token=bool(request.token))
    settings, nonce_key = _as_explained(settings, view)
    _read_for_display(request, view)
    async with aiohttp.ClientSession() as session:
        issuers = Issuers(trusted_issuers(settings.tokens), settings.tokens, session)
        if request.token:
            await _load_keys(issuers, request.token, view)
        pipeline = Pipeline(
            settings,
            JWTVerifier(issuers, TokenCache(0), settings.forwarding.claim_headers),
            None,
            issuer_names=issuers.names,
            nonce_key=nonce_key,
        )
        if not request.token and not request.proof:
            out("outcome: certificate accepted; no token given, so nothing more to check")
            await _print_no_token_answer(pipeline, request, identity, out)
            return 0
        if not request.token:
            return _proof_alone(pipeline, settings, request, view, out)
        trace, refusal, admitted, seen = Trace(), None, None, Seen()
        try:
            decision = pipeline.admit(_as_request(request), identity, seen, None, trace)
            admitted = decision if isinstance(decision, Admitted) else await decision
        except AuthError as error:
            refusal = error
            pipeline.offer_schemes(refusal, seen)  # as the proxy's answer carries them
    view.is_introspected = refusal is not None and _is_introspected(settings, request.token)
    _print_steps(trace, refusal, view, out)
    if view.is_introspected and trace.last is not None and trace.last.check == "token":
        out("outcome: not known here: the introspection endpoint's answer decides")
        return 1
    if refusal is not None:
        return _refused(refusal, out)
    assert admitted is not None
    if admitted.binding == "none":
        out("outcome: FORWARD (public route: no token checked)")
    elif admitted.reported is not None:
        reason = admitted.reported.reason.value
        out(f"outcome: FORWARD (binding.mode report_only: enforce would refuse it, {reason})")
    else:
        out("outcome: FORWARD")
    return 0


def _print_certificate(
    settings: Settings, request: Request, out: Out
) -> tuple[bool, ClientIdentity | None]:
    """Step 1, the listener's: whether the handshake succeeds, and the client's identity."""
    identity = None
    if request.certificate is not None:
        identity = identity_from_der(request.certificate.public_bytes(Encoding.DER))
        out("1. client certificate (checked as the mTLS listener would)")
        out(f"   subject     {identity.subject}")
        out(f"   URI SANs    {', '.join(identity.uris) or '-'}")
        out(f"   x5t#S256    {identity.thumbprint}")
        if settings.client_cert.source == "tls":
            verdict = check_certificate(request.certificate, settings.tls, out)
            if verdict.refusal is not None:
                out(f"outcome: REFUSE: the TLS handshake fails (reason {verdict.refusal.value})")
                return False, identity
        else:
            out("   (client_cert.source is header: the ingress presents it; checked per request)")
    else:
        out("1. client certificate: none given (no --cert)")
        optional = settings.tls.client_cert == "optional"
        if settings.client_cert.source == "tls" and not optional:
            out("   tls.client_cert is required: the listener refuses a connection without one")
            out("   fix: give --cert with the client's certificate, or set tls.client_cert:")
            out("        optional so that DPoP clients without a certificate can connect")
            out("outcome: REFUSE: the TLS handshake fails (reason no_certificate)")
            return False, None
        if not optional:
            out("   client_cert.source is header and tls.client_cert is required:")
            out("   a request without a forwarded certificate is refused")
        else:
            out("   tls.client_cert is optional: the request goes on; only a DPoP-bound token or")
            out("   a public route can pass without a certificate")
    return True, identity


async def _print_no_token_answer(
    pipeline: Pipeline, request: Request, identity: ClientIdentity | None, out: Out
) -> None:
    """What the proxy answers the same request without a token, challenge included."""
    seen = Seen()
    try:
        decision = pipeline.admit(_as_request(request), identity, seen)
        if not isinstance(decision, Admitted):
            await decision
    except AuthError as refusal:
        pipeline.offer_schemes(refusal, seen)
        answer = f"{refusal.refusal.status} (reason {refusal.reason.value})"
        header = challenge(refusal)
        out(f"   without a token: {answer}" + (f", WWW-Authenticate: {header}" if header else ""))
    else:
        out("   without a token: forwarded (public route)")


def _as_explained(settings: Settings, view: View) -> tuple[Settings, bytes]:
    """The settings of the Pipeline explain runs, and its dpop.nonce key: the certificate
    given is the client's whatever client_cert.source says (an ingress header is not what is
    explained), and nonces are checked only when explain can know their key, from
    dpop.nonce_secret_file as `certbound run` reads it (a per-pod random key it cannot)."""
    dpop, nonce_key = settings.dpop, b""
    if dpop.nonce and not dpop.nonce_secret_file:
        view.nonce_note = "dpop.nonce is true with a random key per pod"
        view.nonce_note += " (no dpop.nonce_secret_file), which explain cannot know"
        dpop = dataclasses.replace(dpop, nonce=False)
    elif dpop.nonce:
        try:
            nonce_key = read_nonce_key(dpop.nonce_secret_file)
        except OSError as exc:
            view.nonce_note = f"cannot read dpop.nonce_secret_file ({exc.strerror})"
            dpop = dataclasses.replace(dpop, nonce=False)
    client_cert = dataclasses.replace(settings.client_cert, source="tls")
    return dataclasses.replace(settings, dpop=dpop, client_cert=client_cert), nonce_key


def _read_for_display(request: Request, view: View) -> None:
    """The token's and the proof's header and claims as printed: read without verifying
    (the checks verify them), signatures and private key members never shown."""
    if request.token:
        try:
            header, payload = unverified.read(request.token)
        except unverified.Unreadable:
            view.token_lines.append(f"{label('header')}(not a JWT)")
        else:
            view.token_lines.append(f"{label('header')}{json.dumps(header, sort_keys=True)}")
            shown = json.dumps(payload, sort_keys=True)
            view.token_lines.append(f"{label('claims')}{shown}  (signature not shown)")
    if request.proof:
        view.request_line = f"{label('request')}{request.method.upper()} {request.url}"
        try:
            header = unverified.read(request.proof, payload=False)[0]
        except unverified.Unreadable:
            return
        view.proof_header = header
        view.proof_lines.append(
            f"{label('header')}{json.dumps(_shown_header(header), sort_keys=True)}"
        )
        try:
            claims = unverified.read(request.proof)[1]
            shown = f"{json.dumps(claims, sort_keys=True)}  (signature not shown)"
        except unverified.Unreadable:
            shown = "(unreadable: the payload is not a JSON object)"
        view.proof_lines.append(f"{label('claims')}{shown}")


async def _load_keys(issuers: Issuers, token: str, view: View) -> None:
    """Fetch the keys of the one issuer the token names (as the verifier picks it), so that
    no other issuer hears of this token. A token naming none is refused by the checks."""
    try:
        key_set = issuers.select(read_issuer(token))
    except AuthError:
        return
    try:
        await key_set.refresh()
    except KeySetError as exc:
        view.keys_note = str(exc)


def _as_request(request: Request) -> CheckedRequest:
    """The request as the data plane hands it to the checks."""
    headers = []
    if request.token:
        scheme = "DPoP" if request.proof else "Bearer"
        headers.append((b"Authorization", f"{scheme} {request.token}".encode("latin-1", "replace")))
    if request.proof:
        headers.append((b"DPoP", request.proof.encode("latin-1", "replace")))
    if request.url:
        host = _split_url(request.url).netloc.rpartition("@")[2]
        headers.append((b"Host", host.encode("latin-1", "replace")))
    return CheckedRequest(
        method=request.method.upper(),
        target=request.target,
        headers=tuple(headers),
        lower_names=tuple(name.lower() for name, _ in headers),
        remote="127.0.0.1",
    )


def _proof_alone(
    pipeline: Pipeline, settings: Settings, request: Request, view: View, out: Out
) -> int:
    """No token: the proof's own checks (dpop.verify_proof, as the pipeline calls it), but
    ath and cnf.jkt, which need the token."""
    out("2. DPoP proof alone (no token given: ath and cnf.jkt cannot be checked)")
    # Without a token no issuer is known: the most lenient configured leeway.
    leeway = float(max((e.leeway_seconds for e in trusted_issuers(settings.tokens)), default=0))
    max_age = float(settings.dpop.max_age_seconds)
    trace = Trace()
    try:
        verify_proof(
            request.proof,
            method=request.method.upper(),
            url=pipeline.request_url(_as_request(request), trace),
            access_token="",
            algorithms=frozenset(settings.dpop.algorithms),
            max_age=max_age,
            leeway=leeway,
            trace=trace,
        )
    except AuthError as error:
        last = trace.last
        # ath is verify_proof's last check: with no token to hash, only it may fail.
        if last is None or last.check != "ath":
            error.dpop_algs = " ".join(settings.dpop.algorithms)  # RFC 9449 §7.1
            _print_steps(trace, error, view, out, section=False)
            return _refused(error, out)
    nonce = _proof_nonce(request.proof)
    try:
        pipeline.check_nonce(nonce if isinstance(nonce, str) else None, trace)
    except AuthError as error:
        error.dpop_algs = " ".join(settings.dpop.algorithms)
        _print_steps(trace, error, view, out, section=False)
        return _refused(error, out)
    _print_steps(trace, None, view, out, section=False)
    for line in replay_lines(settings, max_age + leeway):
        out(line)
    out(f"{label('cnf.jkt')}not checked: no token given")
    out("outcome: the proof passes every check explain can make without the token;")
    out("         give --token to check ath and the token's cnf.jkt as well")
    return 0


def _proof_nonce(proof: str) -> object:
    try:
        return unverified.read(proof)[1].get("nonce")
    except unverified.Unreadable:
        return None


def _print_steps(
    trace: Trace, refusal: AuthError | None, view: View, out: Out, *, section: bool = True
) -> None:
    """Every step taken; `refusal` belongs to the last one (the checks stopped there)."""
    printer = Printer(view, out, {**STEPS, **PROOF_STEPS}, sections=section)
    for index, step in enumerate(trace.steps):
        printer.step(step, refusal if index == len(trace.steps) - 1 else None)


def _is_introspected(settings: Settings, token: str) -> bool:
    """The proxy would introspect this token, which explain does not do."""
    if not any(e.introspection.enabled for e in trusted_issuers(settings.tokens)):
        return False
    if not settings.tokens.accept_jwt:
        return True
    try:
        unverified.read(token, payload=False)
    except unverified.Unreadable:
        return True
    return False


def _refused(refusal: AuthError, out: Out) -> int:
    """The answer the proxy would send, as the data plane sends it (errors.error_parts)."""
    answer = challenge(refusal)
    if answer is not None:
        out(f"     WWW-Authenticate: {answer}")
    if refusal.dpop_nonce is not None:
        out(f"     DPoP-Nonce: {refusal.dpop_nonce}")
    code = f' error="{refusal.refusal.error}"' if refusal.refusal.error else ""
    out(f"outcome: REFUSE {refusal.refusal.status}{code} (reason {refusal.reason.value})")
    return 1


def _shown_header(header: dict[str, Any]) -> dict[str, Any]:
    """The proof's header as printed: private key members (refused anyway) never shown."""
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        return header
    hidden = {k: ("(private, not shown)" if k in PRIVATE_MEMBERS else v) for k, v in jwk.items()}
    return {**header, "jwk": hidden}

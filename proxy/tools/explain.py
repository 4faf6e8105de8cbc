"""`certbound explain`: walk one request (a client certificate, a token, a DPoP proof: whatever
the operator has of it) through the decision, step by step.

For the day a client swears its token is right. No network traffic except fetching the keys;
opaque tokens are not introspected (that would spend the token at the authorization server),
and the DPoP replay cache is not consulted (that would need the proxy's memory or its Redis).
Nothing is printed that would let a reader use the credentials: no token, no proof, no
signature, no private key member.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.checks.binding import THUMBPRINT, check_binding
from proxy.checks.policy import (
    PathError,
    Policy,
    Route,
    accepted_binding,
    authorize,
    check_subject,
    compile_policy,
    match_route,
    normalize_path,
)
from proxy.config import read_nonce_key
from proxy.errors import AuthError, Reason, challenge, offer_dpop
from proxy.settings import Settings, trusted_issuers
from proxy.tokens import dpop, unverified
from proxy.tokens.dpop import PRIVATE_MEMBERS
from proxy.tokens.issuers import Issuers, read_issuer
from proxy.tokens.jwks import KeySetError
from proxy.tokens.jwt import JWTVerifier, TokenCache, TokenClaims, read_header
from proxy.trust.certcheck import check_certificate
from proxy.trust.identity import ClientIdentity, identity_from_der

Out = Callable[[str], None]

# The pipeline's wording for the same refusal (proxy/pipeline.py _CERTLESS_REFUSAL).
_CERTLESS_REFUSAL = "no client certificate, and the token is not DPoP-bound"


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


def proxy_url(settings: Settings, url: str, target: str) -> tuple[str, str]:
    """The URL the proxy compares htu with, as pipeline._request_url computes it, and how."""
    path = target.partition("?")[0]
    base = settings.dpop.external_base_url.rstrip("/")
    if base:
        return base + path, f"dpop.external_base_url + path {path}; the Host header is not used"
    host = _split_url(url).netloc.rpartition("@")[2]
    return f"https://{host}{path}", f"https:// + Host header {host} + path {path}; no query"


async def explain(settings: Settings, request: Request, out: Out, now: float | None = None) -> int:
    """Print each step; return 0 if the request would be forwarded, 1 if refused."""
    current = time.time() if now is None else now
    method = request.method.upper()
    algs = " ".join(settings.dpop.algorithms)
    policy = compile_policy(settings.policy, settings.binding.mode)
    route = None

    def refused(step: str, error: AuthError, *, dpop_scheme: bool = False) -> int:
        if dpop_scheme:  # RFC 9449 §7.1: the proxy answers in the scheme the client used
            error.dpop_algs = algs
        offer_dpop(error, accepted_binding(policy, route), algs)  # as pipeline.refused
        refusal = error.refusal
        code = f' error="{refusal.error}"' if refusal.error else ""
        out(f"  -> refused at {step}: {error.reason.value}: {error.description}")
        answer = challenge(error)
        if answer is not None:
            out(f"     WWW-Authenticate: {answer}")
        out(f"outcome: REFUSE {refusal.status}{code} (reason {error.reason.value})")
        return 1

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
                return 1
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
            return 1
        if not optional:
            out("   client_cert.source is header and tls.client_cert is required:")
            out("   a request without a forwarded certificate is refused")
            return refused(
                "client certificate",
                AuthError(Reason.NO_CLIENT_CERT, "no verified client certificate"),
            )
        out("   tls.client_cert is optional: the request goes on; only a DPoP-bound token or a")
        out("   public route can pass without a certificate")

    if not request.token:
        if not request.proof:
            out("outcome: certificate accepted; no token given, so nothing more to check")
            _print_no_token_answer(policy, method, request.target, algs, out)
            return 0
        out("2. DPoP proof alone (no token given: ath and cnf.jkt cannot be checked)")
        # Without a token no issuer is known: the most lenient configured leeway.
        leeway = float(max((e.leeway_seconds for e in trusted_issuers(settings.tokens)), default=0))
        try:
            _, proof_claims = _walk_proof(settings, request, method, "", leeway, current, out)
            _proof_notes(settings, proof_claims, leeway, out)
        except AuthError as error:
            return refused("DPoP proof", error, dpop_scheme=True)
        out(f"   {'cnf.jkt':<12}not checked: no token given")
        out("outcome: the proof passes every check explain can make without the token;")
        out("         give --token to check ath and the token's cnf.jkt as well")
        return 0

    is_dpop = bool(request.proof)
    out("2. route policy")
    if not policy.is_enabled:
        out("   no routes configured: any valid bound token is allowed")
    else:
        try:
            normalised = normalize_path(request.target.partition("?")[0])
        except PathError as exc:
            return refused("path normalisation", AuthError.malformed(str(exc)))
        route = match_route(policy, method, normalised)
        if route is None:
            out(f"   {method} {normalised}: no rule matches")
            out(f"   unmatched requests: {settings.policy.unmatched}")
        else:
            out(
                f"   {method} {normalised}: matches rule path={route.path} "
                f"methods={sorted(route.methods) or 'any'} scopes={sorted(route.scopes)} "
                f"clients={sorted(route.clients) or 'any'} binding={route.binding} "
                f"public={route.public}"
            )
            try:
                check_subject(route, identity)
            except AuthError as error:
                return refused("certificate subject", error)
            if route.public:
                out("outcome: FORWARD (public route: no token checked)")
                return 0

    out("3. token")
    try:
        header = read_header(request.token)
    except AuthError:
        out("   not a JWT: an opaque token would be introspected (RFC 7662); explain does not")
        out("   call the introspection endpoint, so it cannot say more")
        return 1
    out(f"   header      {json.dumps(header, sort_keys=True)}")
    try:
        payload = jwt.decode(request.token, options={"verify_signature": False})
        out(f"   claims      {json.dumps(payload, sort_keys=True)}  (signature not shown)")
    except jwt.InvalidTokenError:
        out("   claims      (unreadable: the payload is not a JSON object)")

    out("4. issuer (the token's iss picks one configured issuer)")
    try:
        iss = read_issuer(request.token)
    except AuthError as error:
        return refused("issuer", error, dpop_scheme=is_dpop)
    entries = [e for e in trusted_issuers(settings.tokens) if e.issuer == iss]
    if not entries:
        known = ", ".join(f"{e.name}={e.issuer}" for e in trusted_issuers(settings.tokens))
        out(f"   configured issuers: {known}")
        return refused(
            "issuer",
            AuthError(Reason.UNKNOWN_ISSUER, "token issuer is not trusted"),
            dpop_scheme=is_dpop,
        )
    out(f"   issuer {entries[0].name}: {iss}")

    out("5. signature and claims (keys fetched from the configured source)")
    async with aiohttp.ClientSession() as session:
        # Only the issuer the token names: its keys are the only ones fetched.
        keys = Issuers((entries[0],), settings.tokens, session)
        try:
            await keys.refresh()
        except KeySetError as exc:
            out(f"   cannot load keys: {exc}")
            out("outcome: REFUSE 503 (reason keys_unavailable)")
            return 1
        verifier = JWTVerifier(keys, TokenCache(0), settings.forwarding.claim_headers)
        try:
            claims: TokenClaims = await verifier.verify(request.token)
        except AuthError as error:
            return refused("token verification", error, dpop_scheme=is_dpop)
    out(f"   ok: iss={claims.issuer} sub={claims.subject} client_id={claims.client_id or '-'}")

    mode = route.binding_mode if route else settings.binding.mode
    try:
        _bind(
            settings,
            request,
            claims,
            identity,
            route,
            method,
            verifier.leeway_for(claims),
            current,
            out,
        )
    except AuthError as error:
        if mode != "report_only" or error.reason is Reason.NO_CLIENT_CERT:
            # No certificate was never a report-only matter (as in the pipeline).
            step = "DPoP proof" if error.refusal.error == "invalid_dpop_proof" else "binding"
            return refused(step, error)
        out(f"   {error.reason.value}: would be refused, but binding.mode is report_only")

    if policy.is_enabled:
        out("7. permission")
        try:
            if route is not None:
                authorize(route, claims)
            elif not policy.unmatched_allowed:
                return refused("policy", AuthError.no_route())
        except AuthError as error:
            # As the pipeline: a dpop route asks for DPoP when the token is bound otherwise.
            asks_dpop = route is not None and route.binding == "dpop"
            return refused(
                "policy", error, dpop_scheme=asks_dpop and error.reason is Reason.WRONG_BINDING_KIND
            )
        out("   allowed")
    out("outcome: FORWARD")
    return 0


def _print_no_token_answer(policy: Policy, method: str, target: str, algs: str, out: Out) -> None:
    """What the proxy answers the same request without a token, challenge included."""
    route = None
    if policy.is_enabled:
        try:
            route = match_route(policy, method, normalize_path(target.partition("?")[0]))
        except PathError:
            return
        if route is not None and route.public:
            out("   without a token: forwarded (public route)")
            return
    error = AuthError(Reason.NO_TOKEN, "no access token")
    offer_dpop(error, accepted_binding(policy, route), algs)
    out(f"   without a token: 401 (reason no_token), WWW-Authenticate: {challenge(error)}")


def _bind(
    settings: Settings,
    request: Request,
    claims: TokenClaims,
    identity: ClientIdentity | None,
    route: Route | None,
    method: str,
    leeway: float,
    now: float,
    out: Out,
) -> None:
    """pipeline._bind, printed: the DPoP proof when cnf names a key, then the certificate
    when cnf names one (or names nothing). Raises AuthError as the pipeline would."""
    cnf = claims.cnf
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    try:
        if jkt is not None:
            out("6. key binding: DPoP (RFC 9449)")
            out(f"   token cnf.jkt         {jkt}  (DPoP-bound, RFC 9449)")
            if not request.proof:
                out("   it passes only as Authorization: DPoP with a DPoP proof header for this")
                out("   request; give that proof (--dpop PROOF --url URL) to check it.")
                out("   Sent as Bearer it is refused:")
                raise AuthError(Reason.DPOP_TOKEN_AS_BEARER, "DPoP-bound token sent as Bearer")
            if not isinstance(jkt, str) or THUMBPRINT.fullmatch(jkt) is None:
                raise AuthError(Reason.INVALID_CNF, "cnf jkt is not a base64url SHA-256 thumbprint")
            proof, proof_claims = _walk_proof(
                settings, request, method, request.token, leeway, now, out
            )
            key_line = f"   {'cnf.jkt':<12}"
            try:
                dpop.check_key(jkt, proof)
            except AuthError as error:
                out(f"{key_line}FAIL {error.reason.value}: {error.description}")
                out(f"   {'':<12}token names {jkt}")
                out(f"   {'':<12}proof key   {proof.thumbprint}")
                out("   fix: the client must sign its proofs with the key the token was issued")
                out("        for (the one it showed the authorization server), or get a new token")
                raise
            out(f"{key_line}ok: the token names the proof's key {proof.thumbprint}")
            _proof_notes(settings, proof_claims, leeway, out)
            if not (isinstance(cnf, dict) and "x5t#S256" in cnf):
                out("   bound to this DPoP key")
                return
            out("   the token's cnf has x5t#S256 too: the certificate must match as well")
        elif request.proof:
            out("6. key binding")
            out(f"   token cnf   {json.dumps(cnf, sort_keys=True)}: no jkt, so not DPoP-bound")
            out("   fix: send it as Authorization: Bearer, without a DPoP header")
            raise AuthError(Reason.BEARER_TOKEN_AS_DPOP, "token is not DPoP-bound; use Bearer")
    except AuthError as failure:
        failure.dpop_algs = " ".join(settings.dpop.algorithms)
        raise
    if jkt is None:
        out("6. certificate binding (RFC 8705)")
    expected = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    out(f"   token cnf.x5t#S256    {expected if expected is not None else '(none)'}")
    if identity is None:
        out("   presented x5t#S256    (no certificate)")
        if expected is not None:
            out("   the token is bound to a certificate: the client must present it; give it to")
            out("   explain with --cert CLIENT.pem")
        raise AuthError(Reason.NO_CLIENT_CERT, _CERTLESS_REFUSAL)
    out(f"   presented x5t#S256    {identity.thumbprint}")
    bound = check_binding(
        cnf,
        identity.thumbprint,
        # cnf with jkt: x5t#S256 beside it must match too (it cannot be "unbound").
        allow_unbound=route.allow_unbound_tokens if route and jkt is None else False,
    )
    out("   bound to this certificate" if bound else "   unbound (allowed)")


def _walk_proof(
    settings: Settings,
    request: Request,
    method: str,
    token: str,
    leeway: float,
    now: float,
    out: Out,
) -> tuple[dpop.Proof, dict[str, Any]]:
    """dpop.verify_proof one check at a time, in its order, a line each; raises AuthError at
    the first that fails. verify_proof itself is run too and has the last word: the walk
    explains the proxy's answer, it never overrules it. Without a token ath is not checked."""
    proof = request.proof
    algorithms = frozenset(settings.dpop.algorithms)
    max_age = float(settings.dpop.max_age_seconds)
    url, how = proxy_url(settings, request.url, request.target)
    try:
        dpop.verify_proof(
            proof,
            method=method,
            url=url,
            access_token=token,
            algorithms=algorithms,
            max_age=max_age,
            leeway=leeway,
            now=now,
        )
        verdict: AuthError | None = None
    except AuthError as error:
        # ath is verify_proof's last check: with no token to hash, only it may fail.
        verdict = None if not token and error.reason is Reason.DPOP_WRONG_ATH else error

    def ok(label: str, text: str) -> None:
        out(f"   {label:<12}ok: {text}")

    def fail(
        label: str, reason: Reason, description: str, details: Sequence[str] = (), fix: str = ""
    ) -> AuthError:
        out(f"   {label:<12}FAIL {reason.value}: {description}")
        for detail in details:
            out(f"   {'':<12}{detail}")
        if fix:
            out(f"   fix: {fix}")
        if verdict is not None and verdict.reason is not reason:
            out(f"   note: the proxy's own check stops at {verdict.reason.value} instead; its")
            out("         answer is the one below")
        return verdict or AuthError(reason, description)

    invalid = Reason.INVALID_DPOP_PROOF
    out(f"   request     {method} {request.url}")
    if len(proof) > dpop.MAX_PROOF_LENGTH:
        raise fail(
            "length",
            invalid,
            "DPoP proof too long",
            [f"{len(proof)} characters, at most {dpop.MAX_PROOF_LENGTH}"],
            "the DPoP header must hold the proof alone: one compact JWS",
        )
    ok("length", f"{len(proof)} characters (at most {dpop.MAX_PROOF_LENGTH})")
    try:
        # Read as the proxy reads it (one spelling of a compact JWS), not by PyJWT's rules.
        header = unverified.read(proof, payload=False)[0]
    except unverified.Unreadable:
        raise fail(
            "JWS form",
            invalid,
            "DPoP proof is not a JWS",
            fix="the DPoP header must hold one compact JWS: header.payload.signature",
        ) from None
    ok("JWS form", "compact JWS")
    out(f"   header      {json.dumps(_shown_header(header), sort_keys=True)}")
    try:
        shown = unverified.read(proof)[1]
        out(f"   claims      {json.dumps(shown, sort_keys=True)}  (signature not shown)")
    except unverified.Unreadable:
        out("   claims      (unreadable: the payload is not a JSON object)")

    typ = header.get("typ")
    if typ != "dpop+jwt":
        raise fail(
            "typ",
            invalid,
            "DPoP proof typ is not dpop+jwt",
            [f"typ is {json.dumps(typ)}"],
            "the client must set the proof's JWS header typ to dpop+jwt (RFC 9449 §4.2)",
        )
    ok("typ", "dpop+jwt")

    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in dpop.ASYMMETRIC_ALGORITHMS:
        asymmetric = isinstance(alg, str) and alg in dpop.ASYMMETRIC_ALGORITHMS
        why = (
            f"{alg} is not in dpop.algorithms ({' '.join(settings.dpop.algorithms)})"
            if asymmetric
            else f"{json.dumps(alg)} is not an asymmetric algorithm: a proof shows possession "
            "of a private key, so none and HS* never pass"
        )
        raise fail(
            "alg",
            Reason.DPOP_DISALLOWED_ALGORITHM,
            "DPoP proof alg is not allowed",
            [why],
            f"sign proofs with one of {' '.join(settings.dpop.algorithms)}"
            + (", or add it to dpop.algorithms" if asymmetric else ""),
        )
    ok("alg", f"{alg} (dpop.algorithms: {' '.join(settings.dpop.algorithms)})")

    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise fail(
            "jwk",
            invalid,
            "DPoP proof has no jwk header",
            fix="the proof's JWS header must carry the client's public key as jwk",
        )
    private = sorted(PRIVATE_MEMBERS & jwk.keys())
    if private:
        raise fail(
            "jwk",
            Reason.DPOP_PRIVATE_KEY,
            "DPoP proof jwk holds private key material",
            [f"private members present: {', '.join(private)} (values not shown)"],
            "the client sends its private key with every request: it must send the public "
            "key only, and treat this key as leaked (new key pair, new token)",
        )
    kind = " ".join(str(jwk[m]) for m in ("kty", "crv") if isinstance(jwk.get(m), str))
    ok("jwk", f"public key ({kind or 'no kty'})")
    try:
        thumbprint = dpop.jwk_thumbprint(jwk)
    except AuthError as error:
        raise fail(
            "thumbprint",
            error.reason,
            error.description,
            [f"kty {json.dumps(jwk.get('kty'))}: RFC 7638 needs EC (crv, x, y), RSA (e, n)"],
            "the jwk must be a complete EC, RSA or OKP public key",
        ) from None
    ok("thumbprint", f"{thumbprint} (RFC 7638, SHA-256)")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except jwt.PyJWTError:
        raise fail(
            "key",
            invalid,
            "the proof's jwk does not fit its alg",
            [f"a {kind or 'key'} key cannot verify {alg}"],
            "sign with an algorithm of the key's type (ES256 for EC P-256, PS256/RS256 for RSA)",
        ) from None
    ok("key", f"{kind} fits {alg}")
    try:
        claims = jwt.decode(proof, key, algorithms=[alg], options=dpop.PROOF_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise fail(
            "signature",
            Reason.DPOP_INVALID_SIGNATURE,
            "DPoP proof signature is invalid",
            fix="the proof must be signed by the private key of the jwk in its own header; "
            "this one was signed by another key, or changed after signing",
        ) from None
    except jwt.PyJWTError as exc:
        raise fail(
            "signature", invalid, "DPoP proof cannot be decoded", [f"PyJWT: {exc}"]
        ) from None
    ok("signature", "by the jwk in the header")

    jti, iat = claims.get("jti"), claims.get("iat")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise fail(
            "jti",
            invalid,
            "DPoP proof has no usable jti",
            [f"jti is {json.dumps(jti)[:80]}"],
            "every proof needs a unique jti string of 1 to 256 characters",
        )
    ok("jti", f"present ({len(jti)} characters)")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise fail(
            "iat",
            invalid,
            "DPoP proof has no numeric iat",
            [f"iat is {json.dumps(iat)[:80]}"],
            "iat must be the proof's creation time in seconds since the epoch (a number)",
        )
    try:
        when = dt.datetime.fromtimestamp(iat, dt.UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        when = "not a representable time"
    ok("iat", f"{iat} ({when})")

    htm = claims.get("htm")
    if htm != method:
        raise fail(
            "htm",
            Reason.DPOP_WRONG_METHOD,
            "DPoP proof htm is not the request method",
            [f"proof {json.dumps(htm)}, request {method}"],
            f"the client must make a new proof for each request, with htm {method}",
        )
    ok("htm", method)

    htu = claims.get("htu")
    expected = dpop.normalize_url(url)
    presented = dpop.normalize_url(htu) if isinstance(htu, str) else None
    if presented is None or presented != expected:
        shape = (
            "https://<Host header><path>"
            if not settings.dpop.external_base_url
            else ("dpop.external_base_url + <path>")
        )
        raise fail(
            "htu",
            Reason.DPOP_WRONG_URL,
            "DPoP proof htu is not the request URL",
            [
                f"proof    {presented or _unusable_htu(htu)}",
                f"request  {expected or url + ' (unusable)'}  ({how})",
            ],
            f"htu must be {expected or shape} ({shape}, without query or fragment); "
            f"the client used {json.dumps(htu)}",
        )
    ok("htu", presented)
    out(f"   {'':<12}request  {expected}  ({how})")

    age = now - iat
    window = f"at most {max_age:g} s + {leeway:g} s leeway"
    if iat < now - max_age - leeway:
        raise fail(
            "iat age",
            Reason.DPOP_PROOF_EXPIRED,
            "DPoP proof iat is too old",
            [f"{age:.0f} s old, {window} (measured now: a proof captured earlier ages too)"],
            "the client must make a fresh proof for each request, and keep its clock right",
        )
    if iat > now + leeway:
        raise fail(
            "iat age",
            Reason.DPOP_PROOF_NOT_YET_VALID,
            "DPoP proof iat is in the future",
            [f"{-age:.0f} s in the future, at most {leeway:g} s allowed"],
            "the client's clock is ahead: fix its time synchronisation",
        )
    ok("iat age", f"{age:.0f} s old ({window})")

    ath = claims.get("ath")
    if not token:
        out(f"   {'ath':<12}not checked: no token given (it must be base64url SHA-256 of it)")
    else:
        want = dpop.b64url_sha256(token.encode("ascii"))
        if ath != want:
            raise fail(
                "ath",
                Reason.DPOP_WRONG_ATH,
                "DPoP proof ath is not the access token's hash",
                [f"proof ath     {json.dumps(ath)}", f"token's hash  {want}"],
                "ath must be base64url (no padding) of SHA-256 of the very token sent with "
                "Authorization: DPoP, without the scheme"
                + ("; this proof has none" if ath is None else "; it was made for another token"),
            )
        ok("ath", f"SHA-256 of the token ({want})")
    if verdict is not None:
        # Only if this walk and verify_proof ever drift apart.
        out(f"   note: the proxy's own check refuses it: {verdict.reason.value}")
        raise verdict
    return dpop.Proof(thumbprint=thumbprint, jti=jti, iat=float(iat)), claims


def _proof_notes(settings: Settings, claims: dict[str, Any], leeway: float, out: Out) -> None:
    """The nonce (when explain can know the key) and what explain cannot check: replay."""
    _check_nonce(settings, claims.get("nonce"), out)
    where = (
        "in Redis (dpop.replay_cache), shared by the replicas"
        if settings.dpop.replay_cache
        else "in each proxy process"
    )
    window = settings.dpop.max_age_seconds + leeway
    out(f"   {'replay':<12}not checked: the proxy remembers each jti for {window:g} s {where};")
    out(f"   {'':<12}explain does not consult that, so a proof sent before is refused")
    out(f"   {'':<12}(dpop_replayed) though it passes here")


def _check_nonce(settings: Settings, nonce: object, out: Out) -> None:
    """dpop.nonce (RFC 9449 §9): checked as the proxy does when its key is in a file explain
    can read too; a per-pod random key is known to that pod alone."""
    shown = json.dumps(nonce)[:120] if nonce is not None else "none"
    if not settings.dpop.nonce:
        if nonce is not None:
            out(f"   {'nonce':<12}{shown}: not checked (dpop.nonce is false)")
        return
    if not settings.dpop.nonce_secret_file:
        out(f"   {'nonce':<12}{shown}: not checked: dpop.nonce is true with a random key per pod")
        out(f"   {'':<12}(no dpop.nonce_secret_file), which explain cannot know")
        return
    try:
        key = read_nonce_key(settings.dpop.nonce_secret_file)
    except OSError as exc:
        out(f"   {'nonce':<12}not checked: cannot read dpop.nonce_secret_file ({exc.strerror})")
        return
    nonces = dpop.Nonces(key, settings.dpop.nonce_rotation_seconds)
    try:
        renewed = nonces.check(nonce if isinstance(nonce, str) else None)
    except AuthError as error:
        out(f"   {'nonce':<12}FAIL {error.reason.value}: {error.description} ({shown})")
        out("   fix: the client retries with the nonce of the DPoP-Nonce header of the 401;")
        out("        a client that keeps failing here does not read that header")
        raise
    if renewed is None:
        out(f"   {'nonce':<12}ok: the current nonce")
    else:
        out(f"   {'nonce':<12}ok: last period's nonce; the answer would carry a new DPoP-Nonce")


def _shown_header(header: dict[str, Any]) -> dict[str, Any]:
    """The proof's header as printed: private key members (refused anyway) never shown."""
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        return header
    hidden = {k: ("(private, not shown)" if k in PRIVATE_MEMBERS else v) for k, v in jwk.items()}
    return {**header, "jwk": hidden}


def _unusable_htu(htu: object) -> str:
    """Why dpop.normalize_url refused the proof's htu."""
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

"""`certbound explain`: walk one certificate (and a token, when given) through the decision,
step by step.

For the day a client swears its token is right. No network traffic except fetching the keys;
opaque tokens are not introspected (that would spend the token at the authorization server).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.binding import check_binding
from proxy.certcheck import check_certificate
from proxy.config import Settings, trusted_issuers
from proxy.errors import AuthError, Reason
from proxy.identity import identity_from_der
from proxy.policy import (
    PathError,
    authorize,
    check_subject,
    compile_policy,
    match_route,
    normalize_path,
)
from proxy.tokens.issuers import Issuers, read_issuer
from proxy.tokens.jwks import KeySetError
from proxy.tokens.jwt import JWTVerifier, TokenCache, TokenClaims, read_header


async def explain(
    settings: Settings,
    certificate: x509.Certificate,
    token: str,
    method: str,
    path: str,
    out: Callable[[str], None],
) -> int:
    """Print each step; return 0 if the request would be forwarded, 1 if refused."""

    def refused(step: str, error: AuthError) -> int:
        refusal = error.refusal
        code = f' error="{refusal.error}"' if refusal.error else ""
        out(f"  -> refused at {step}: {error.reason.value}: {error.description}")
        out(f"outcome: REFUSE {refusal.status}{code} (reason {error.reason.value})")
        return 1

    identity = identity_from_der(certificate.public_bytes(Encoding.DER))
    out("1. client certificate (checked as the mTLS listener would)")
    out(f"   subject     {identity.subject}")
    out(f"   URI SANs    {', '.join(identity.uris) or '-'}")
    out(f"   x5t#S256    {identity.thumbprint}")
    if settings.client_cert.source == "tls":
        verdict = check_certificate(certificate, settings.tls, out)
        if verdict.refusal is not None:
            out(f"outcome: REFUSE: the TLS handshake fails (reason {verdict.refusal.value})")
            return 1
    else:
        out("   (client_cert.source is header: the ingress presents it; checked per request)")
    if not token:
        out("outcome: certificate accepted; no token given, so nothing more to check")
        return 0

    out("2. route policy")
    policy = compile_policy(settings.policy, settings.binding.mode)
    route = None
    if not policy.is_enabled:
        out("   no routes configured: any valid bound token is allowed")
    else:
        try:
            normalised = normalize_path(path.partition("?")[0])
        except PathError as exc:
            return refused("path normalisation", AuthError.malformed(str(exc)))
        route = match_route(policy, method.upper(), normalised)
        if route is None:
            out(f"   {method.upper()} {normalised}: no rule matches")
            out(f"   unmatched requests: {settings.policy.unmatched}")
        else:
            out(
                f"   {method.upper()} {normalised}: matches rule path={route.path} "
                f"methods={sorted(route.methods) or 'any'} scopes={sorted(route.scopes)} "
                f"clients={sorted(route.clients) or 'any'} public={route.public}"
            )
            try:
                check_subject(route, identity)
            except AuthError as error:
                return refused("certificate subject", error)
            if route.public:
                out("outcome: FORWARD (public route: mTLS only, no token)")
                return 0

    out("3. token")
    try:
        header = read_header(token)
    except AuthError:
        out("   not a JWT: an opaque token would be introspected (RFC 7662); explain does not")
        out("   call the introspection endpoint, so it cannot say more")
        return 1
    out(f"   header      {json.dumps(header, sort_keys=True)}")
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
        out(f"   claims      {json.dumps(payload, sort_keys=True)}  (signature not shown)")
    except jwt.InvalidTokenError:
        out("   claims      (unreadable: the payload is not a JSON object)")

    out("4. issuer (the token's iss picks one configured issuer)")
    try:
        iss = read_issuer(token)
    except AuthError as error:
        return refused("issuer", error)
    entries = [e for e in trusted_issuers(settings.tokens) if e.issuer == iss]
    if not entries:
        known = ", ".join(f"{e.name}={e.issuer}" for e in trusted_issuers(settings.tokens))
        out(f"   configured issuers: {known}")
        return refused("issuer", AuthError(Reason.UNKNOWN_ISSUER, "token issuer is not trusted"))
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
            claims: TokenClaims = await verifier.verify(token)
        except AuthError as error:
            return refused("token verification", error)
    out(f"   ok: iss={claims.issuer} sub={claims.subject} client_id={claims.client_id or '-'}")

    out("6. certificate binding (RFC 8705)")
    cnf = claims.cnf
    if isinstance(cnf, dict) and cnf.get("jkt") is not None:
        # RFC 9449: bound to a key proven per request; explain takes no proof (yet).
        out(f"   token cnf.jkt         {cnf.get('jkt')}  (DPoP-bound, RFC 9449)")
        out("   with Authorization: DPoP it passes only with a valid DPoP proof for the request,")
        out("   which explain does not check; sent as Bearer it is refused:")
        return refused(
            "binding",
            AuthError(Reason.DPOP_TOKEN_AS_BEARER, "DPoP-bound token sent as Bearer"),
        )
    expected = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    out(f"   token cnf.x5t#S256    {expected if expected is not None else '(none)'}")
    out(f"   presented x5t#S256    {identity.thumbprint}")
    mode = route.binding_mode if route else settings.binding.mode
    try:
        check_binding(
            cnf, identity.thumbprint, allow_unbound=route.allow_unbound_tokens if route else False
        )
        out("   bound to this certificate" if expected is not None else "   unbound (allowed)")
    except AuthError as error:
        if mode != "report_only":
            return refused("binding", error)
        out(f"   {error.reason.value}: would be refused, but binding.mode is report_only")

    if policy.is_enabled:
        out("7. permission")
        try:
            if route is not None:
                authorize(route, claims)
            elif not policy.unmatched_allowed:
                return refused("policy", AuthError.no_route())
        except AuthError as error:
            return refused("policy", error)
        out("   allowed")
    out("outcome: FORWARD")
    return 0

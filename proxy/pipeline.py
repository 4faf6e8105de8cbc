"""The request path of design.md, step by step: identity -> token -> binding -> policy ->
forward. Each step is a call into its own module; this one orders them, and turns the outcome
into one decision that is counted (metrics.py) and, for refusals, audited (audit.py)."""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from proxy import audit, metrics
from proxy.binding import check_binding
from proxy.config import Settings
from proxy.errors import AuthError, Outcome, Reason, error_response
from proxy.forward import Forwarder, upstream_request_headers
from proxy.forwarded import ForwardedCertVerifier, is_trusted_peer, parse_client_cert, parse_xfcc
from proxy.identity import ClientIdentity
from proxy.policy import (
    PathError,
    Policy,
    authorize,
    check_subject,
    compile_policy,
    match_route,
    normalize_path,
)
from proxy.tokens.extract import extract_bearer, form_has_token
from proxy.tokens.introspect import Introspector
from proxy.tokens.jwt import JWTVerifier, TokenClaims, read_header

log = logging.getLogger("certbound.pipeline")

MAX_FORM_BYTES = 1 << 20


@dataclass
class _Seen:
    """What the checks learnt before deciding, for the audit line of any outcome."""

    identity: ClientIdentity | None = None
    claims: TokenClaims | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request the checks let through, and what the forwarder needs to know about it."""

    identity: ClientIdentity
    target: str  # the request-target to send: as received, or the normalised matched path
    binding: str  # bound | unbound | report_only_failed | none (X-Certbound-Binding)
    body: bytes | None = None  # a form body already read to look for a token
    reported: AuthError | None = None  # a binding failure that report_only let through


@dataclass
class Pipeline:
    settings: Settings
    verifier: JWTVerifier
    forwarder: Forwarder
    introspector: Introspector | None
    identities: dict[object, ClientIdentity]
    forwarded_verifier: ForwardedCertVerifier | None = None
    policy: Policy = field(init=False)
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.policy = compile_policy(self.settings.policy, self.settings.binding.mode)
        self.trusted_networks = tuple(
            ipaddress.ip_network(c) for c in self.settings.client_cert.trusted_proxies
        )

    @property
    def is_report_only_anywhere(self) -> bool:
        return self.settings.binding.mode == "report_only" or any(
            r.binding_mode == "report_only" for r in self.policy.routes
        )

    async def handle(self, request: web.Request, started: float) -> web.StreamResponse:
        """Decide, then forward or refuse; exactly one decision is counted per request."""
        seen = _Seen()
        try:
            admitted = await self._admit(request, seen)
        except AuthError as refusal:
            metrics.count(Outcome.REJECTED, refusal.reason)
            self._audit(request, Outcome.REJECTED, refusal, seen)
            metrics.OVERHEAD.observe(time.perf_counter() - started)
            return error_response(refusal)
        headers = upstream_request_headers(
            request.headers,
            admitted.identity,
            seen.claims,
            binding=admitted.binding,
            remote=request.remote or "",
            client_cert_header=self.settings.forwarding.client_cert_header,
        )
        try:
            response = await self.forwarder.forward(
                request, headers, target=admitted.target, started=started, body=admitted.body
            )
        except AuthError as fault:
            metrics.count(Outcome.UPSTREAM_ERROR, fault.reason)
            self._audit(request, Outcome.UPSTREAM_ERROR, fault, seen)
            return error_response(fault)
        if admitted.reported is not None:
            metrics.count(Outcome.REPORT_ONLY, admitted.reported.reason)
            self._audit(request, Outcome.REPORT_ONLY, admitted.reported, seen, response.status)
        else:
            metrics.FORWARDED_OK.inc()
            if self.settings.log.audit_accepted:
                self._audit(request, Outcome.FORWARDED, None, seen, response.status)
        return response

    async def _admit(self, request: web.Request, seen: _Seen) -> Admitted:
        """The checks, in the order of design.md. Raises AuthError for a refusal; records
        what it learnt in `seen`, so a refusal can still be audited with it."""
        if not request.raw_path.startswith("/"):
            # Only origin-form means anything to a sidecar: an absolute-form target would be
            # glued onto the upstream URL (a 500, or a 502 counted as an upstream fault).
            raise AuthError.malformed("the request target must be an absolute path")
        identity = seen.identity = self._identity(request)
        if identity is None:
            raise AuthError(Reason.NO_CLIENT_CERT, "no verified client certificate")
        target, route = request.raw_path, None
        if self.policy.is_enabled:
            target, path = _normalised_target(request)
            route = match_route(self.policy, request.method, path)
            if route is not None:
                check_subject(route, identity)
                if route.public:
                    return Admitted(identity, target, binding="none")
        token = extract_bearer(request.headers.getall("Authorization", []), request.query)
        body = None
        if request.content_type == "application/x-www-form-urlencoded":
            body = await _read_form(request)
            if form_has_token(body):
                raise AuthError.malformed("access tokens in a form body are not accepted")
        claims = seen.claims = await self._verify(token)
        mode = route.binding_mode if route else self.settings.binding.mode
        reported = None
        try:
            is_bound = check_binding(
                claims.cnf,
                identity.thumbprint,
                allow_unbound=route.allow_unbound_tokens if route else False,
            )
            binding = "bound" if is_bound else "unbound"
        except AuthError as failure:
            if mode != "report_only":
                raise
            # Rollout: count and log what enforce would have done, then go on.
            reported, binding = failure, "report_only_failed"
        if route is not None:
            authorize(route, claims)
        elif self.policy.is_enabled and not self.policy.unmatched_allowed:
            raise AuthError.no_route()
        return Admitted(identity, target, binding, body, reported)

    def _identity(self, request: web.Request) -> ClientIdentity | None:
        """From the TLS session, or from a header a trusted ingress set (client_cert.source)."""
        from_tls = self.identities.get(request.protocol)
        cc = self.settings.client_cert
        if cc.source == "tls":
            return from_tls
        if not is_trusted_peer(request.remote, self.trusted_networks):
            return None
        if cc.trusted_proxy_subjects and (
            from_tls is None or from_tls.subject not in cc.trusted_proxy_subjects
        ):
            return None
        assert self.forwarded_verifier is not None
        if cc.header_format == "xfcc":
            values = request.headers.getall("X-Forwarded-Client-Cert", [])
            if len(values) > 1:
                raise AuthError(Reason.MALFORMED_REQUEST, "more than one X-Forwarded-Client-Cert")
            if not values:
                return None
            der, chain = parse_xfcc(values[0])
        else:
            values = request.headers.getall("Client-Cert", [])
            if len(values) > 1:
                raise AuthError(Reason.MALFORMED_REQUEST, "more than one Client-Cert header")
            if not values:
                return None
            chain_values = request.headers.getall("Client-Cert-Chain", [])
            der, chain = parse_client_cert(values[0], ",".join(chain_values) or None)
        return self.forwarded_verifier.verify(der, chain)

    async def _verify(self, token: str) -> TokenClaims:
        """JWTs are verified locally; anything else goes to introspection when configured."""
        if self.settings.tokens.accept_jwt:
            if self.introspector is None:
                # verify() reads the header itself on a cache miss (same refusal for a
                # malformed token) and skips it on a hit: no second decode per request.
                return await self.verifier.verify(token)
            try:
                read_header(token)
            except AuthError:
                pass
            else:
                return await self.verifier.verify(token)
        if self.introspector is None:
            raise AuthError(Reason.INVALID_TOKEN, "token is not a JWT")
        return await self.introspector.introspect(token)

    def _audit(
        self,
        request: web.Request,
        outcome: Outcome,
        refusal: AuthError | None,
        seen: _Seen,
        status: int | None = None,
    ) -> None:
        identity, claims = seen.identity, seen.claims
        cnf = claims.cnf if claims is not None else None
        expected = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        audit.write(
            audit.AuditRecord(
                outcome=outcome,
                reason=refusal.reason if refusal else Reason.OK,
                status=status
                if status is not None
                else (refusal.refusal.status if refusal else 200),
                method=request.method,
                path=request.path[:512],
                remote=request.remote or "",
                thumbprint=identity.thumbprint if identity else "",
                cnf_thumbprint=expected[:64] if isinstance(expected, str) else "",
                jti=claims.jti[:128] if claims else "",
                sub=claims.subject[:256] if claims else "",
                client_id=claims.client_id[:256] if claims else "",
                iss=claims.issuer[:256] if claims else "",
            )
        )


def _normalised_target(request: web.Request) -> tuple[str, str]:
    """(request-target to forward, path to match): the forwarded path is the matched one."""
    raw_path, _, query = request.raw_path.partition("?")
    try:
        path = normalize_path(raw_path)
    except PathError as exc:
        raise AuthError.malformed(str(exc)) from None
    return (path + "?" + query if query else path), path


async def _read_form(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise AuthError(Reason.MALFORMED_REQUEST, "form body too large to inspect")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise AuthError(Reason.MALFORMED_REQUEST, "form body too large to inspect")
    return body

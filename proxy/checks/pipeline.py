"""The checks of docs/design.md, step by step: identity -> token -> binding -> policy. Each step
is a call into its own module; this one orders them, and turns the outcome into one decision
that is counted (metrics.py) and, for refusals, audited (audit.py).

It takes a plain `Request` value and never learns which server parsed it. A request whose
token is already in the verified-token cache is decided synchronously (no task, no await);
only a cache miss returns a coroutine. Given a Trace (proxy/trace.py), each check records
itself there before deciding: that record is what `certbound explain` prints.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from proxy import audit, metrics
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
from proxy.checks.replay import ForeignCertificates
from proxy.checks.request import Request
from proxy.errors import AuthError, Outcome, Reason, offer_dpop
from proxy.settings import Settings
from proxy.tokens.dpop import Nonces, b64url_sha256, check_key, verify_proof
from proxy.tokens.extract import MAX_TOKEN_LENGTH, extract_credentials
from proxy.tokens.introspect import Introspector
from proxy.tokens.jwt import JWTVerifier, TokenClaims, read_header
from proxy.tokens.replay_cache import (
    ReplayCache,
    ReplayCacheUnavailable,
    SharedReplayCache,
    replay_key,
)
from proxy.tokens.unverified import is_compact
from proxy.trace import Trace
from proxy.trust.forwarded_cert import (
    ForwardedCertVerifier,
    is_trusted_peer,
    parse_client_cert,
    parse_xfcc,
)
from proxy.trust.identity import ClientIdentity

log = logging.getLogger("certbound.pipeline")


@dataclass(slots=True)
class Seen:
    """What the checks learnt before deciding, for the audit line of any outcome."""

    identity: ClientIdentity | None = None
    claims: TokenClaims | None = None
    route: Route | None = None  # the matched route, for the challenge of a refusal


class Admitted(NamedTuple):
    """A request the checks let through, and what the forwarder needs to know about it
    (immutable; a tuple because one is built for every request)."""

    identity: ClientIdentity | None  # None: tls.client_cert optional and none was presented
    target: str  # the request-target to send: as received, or the normalised matched path
    binding: str  # bound | unbound | report_only_failed | none (X-Certbound-Binding)
    claims: TokenClaims | None = None
    reported: AuthError | None = None  # a binding failure that report_only let through
    dpop_nonce: str | None = None  # dpop.nonce: the new nonce for a client whose one aged


Decision = Admitted | Coroutine[Any, Any, Admitted]


class TokenMemo:
    """The last token one connection presented, once it was verified and found bound to that
    connection's certificate. Kept-alive clients send the same Authorization value with every
    request; while the token cache's key-set generation is unchanged and the token is within
    its lifetime, neither its digest, nor the cache lookup, nor the binding is repeated. A
    different value, a key-set change or the clock falls back to the full checks.

    A DPoP-bound token is remembered apart (its proof is checked on every request, so only the
    token's lookup and its hash, ath, are saved), and only once a proof for it passed."""

    __slots__ = (
        "_authorization",
        "_claims",
        "_dpop",
        "_generation",
        "_valid_from",
        "_valid_until",
    )

    def __init__(self) -> None:
        self._authorization: str | None = None
        self._claims: TokenClaims | None = None
        self._generation = -1
        self._valid_from = self._valid_until = 0.0
        # Authorization value, claims, generation, valid from, valid until, token hash
        self._dpop: tuple[str, TokenClaims, int, float, float, str] | None = None

    def recall_dpop(
        self, authorization: str, generation: int
    ) -> tuple[TokenClaims, str] | tuple[None, None]:
        """(claims, token hash) of the DPoP-bound token this value carries, as recall()."""
        d = self._dpop
        if d is None or authorization != d[0] or generation != d[2]:
            return None, None
        return (d[1], d[5]) if d[3] <= time.time() < d[4] else (None, None)

    def remember_dpop(
        self,
        authorization: str,
        claims: TokenClaims,
        generation: int,
        leeway: float,
        token_hash: str,
    ) -> None:
        self._dpop = (
            authorization,
            claims,
            generation,
            claims.not_before - leeway,
            claims.expires_at + leeway,
            token_hash,
        )

    def recall(self, authorization: str, generation: int) -> TokenClaims | None:
        if authorization != self._authorization or generation != self._generation:
            return None
        return self._claims if self._valid_from <= time.time() < self._valid_until else None

    def remember(
        self, authorization: str, claims: TokenClaims, generation: int, leeway: float
    ) -> None:
        self._authorization, self._claims, self._generation = authorization, claims, generation
        # The same window the token cache and the verifier allow (exp and nbf with leeway).
        self._valid_from = claims.not_before - leeway
        self._valid_until = claims.expires_at + leeway


@dataclass
class Pipeline:
    settings: Settings
    verifier: JWTVerifier
    introspector: Introspector | None
    forwarded_verifier: ForwardedCertVerifier | None = None
    issuer_names: tuple[str, ...] = ()  # the closed set of metric labels
    # dpop.replay_cache: the shared jti store (server.start builds it, and closes it).
    shared_replays: SharedReplayCache | None = None
    nonce_key: bytes = b""  # dpop.nonce: the HMAC key of the nonces (server.start reads it)
    policy: Policy = field(init=False)
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False)
    foreign: ForeignCertificates = field(init=False, default_factory=ForeignCertificates)
    _forwarded_ok: metrics.ForwardedOk = field(init=False)

    def __post_init__(self) -> None:
        self.policy = compile_policy(self.settings.policy, self.settings.binding.mode)
        # Only JWTs (whose cache entries live until exp) verified for a certificate fixed for
        # the connection's life (the TLS session, not a forwarded header) are remembered.
        self._remembers = (
            self.settings.tokens.cache_size > 0  # tokens.cache_size: 0 means verify every time
            and self.settings.tokens.accept_jwt
            and self.introspector is None
            and self.settings.client_cert.source == "tls"
        )
        # JWTs are verified here (no introspection): a miss reads the token in verify_now.
        self._reads_jwts = self.settings.tokens.accept_jwt and self.introspector is None
        # tls.client_cert: optional lets a connection without a certificate reach the checks.
        self._certless = self.settings.tls.client_cert == "optional"
        dpop = self.settings.dpop
        self._dpop_algorithms = frozenset(dpop.algorithms)
        self._dpop_algs = " ".join(dpop.algorithms)
        self._dpop_base = dpop.external_base_url.rstrip("/")
        self.replays = ReplayCache(dpop.replay_cache_size)
        self._unrecorded_allowed = dpop.replay_cache_unavailable == "allow"
        self._replay_cache_logged = -math.inf
        self.nonces = Nonces(self.nonce_key, dpop.nonce_rotation_seconds) if dpop.nonce else None
        for outcome in ("refused", "allowed"):  # alerts take increase(): exist before the first
            metrics.DPOP_REPLAY_CACHE_FAILURES.labels(outcome=outcome)
        self.trusted_networks = tuple(
            ipaddress.ip_network(c) for c in self.settings.client_cert.trusted_proxies
        )
        metrics.create_request_series(
            self.issuer_names, is_report_only=self.is_report_only_anywhere
        )
        self._forwarded_ok = metrics.forwarded_ok_series(self.issuer_names)
        for name in self.issuer_names:  # alerts take increase() of it: exist before the first
            metrics.FOREIGN_CERTIFICATE_SWITCHES.labels(issuer=name)

    @property
    def is_report_only_anywhere(self) -> bool:
        return self.settings.binding.mode == "report_only" or any(
            r.binding_mode == "report_only" for r in self.policy.routes
        )

    def admit(
        self,
        request: Request,
        from_tls: ClientIdentity | None,
        seen: Seen,
        memo: TokenMemo | None = None,
        trace: Trace | None = None,
    ) -> Decision:
        """The checks, in the order of docs/design.md. Returns Admitted, or a coroutine resolving
        to it when the token must be verified with I/O. Raises AuthError for a refusal and
        records what it learnt in `seen`, so a refusal can still be audited with it. `memo`:
        the connection's TokenMemo, when the caller keeps one per connection. `trace`: where
        to record each check (explain); None on the request path."""
        if trace is not None:
            trace.check("target", target=request.target)
        if not request.target.startswith("/"):
            # Only origin-form means anything to a sidecar: an absolute-form target would be
            # glued onto the upstream URL, and `*` or authority-form name no resource of it.
            raise AuthError.malformed("the request target must be an absolute path")
        if trace is not None:
            trace.check("certificate", source=self.settings.client_cert.source)
        identity = seen.identity = self._identity(request, from_tls)
        if identity is None and not self._certless:
            raise AuthError(Reason.NO_CLIENT_CERT, "no verified client certificate")
        target, route = request.target, None
        if trace is not None:
            trace.check("route", method=request.method, is_enabled=self.policy.is_enabled)
        if self.policy.is_enabled:
            target, path = _normalised_target(request.target)
            route = match_route(self.policy, request.method, path)
            if trace is not None:
                trace.note(path=path, route=route, unmatched=self.settings.policy.unmatched)
            if route is not None:
                seen.route = route
                if trace is not None and route.subjects:
                    trace.check("subject", identity=identity, subjects=sorted(route.subjects))
                check_subject(route, identity)
                if route.public:
                    return Admitted(identity, target, binding="none")
        query = request.query
        authorization = request.values(b"authorization")
        # A DPoP client need not have a certificate: its memo keeps no proof, only the token's.
        dpop_memo = memo if self._remembers else None
        if not self._remembers or identity is None:
            memo = None
        single = authorization[0] if len(authorization) == 1 and not query else None
        claims, token, is_dpop, token_hash, presented = None, "", False, None, None
        if single is not None:
            if memo is not None:
                # Only mTLS-bound tokens sent as Bearer are remembered: a DPoP request never
                # gets here without its proof being checked below.
                claims = memo.recall(single, self.verifier.generation)
                if claims is not None:
                    seen.claims = claims
                    if trace is not None:  # token and binding: as this connection's last
                        trace.check("token", claims=claims, is_remembered=True)
                        self._trace_policy(trace, route)
                    return self._authorize(claims, identity, target, route, "bound", None)
            if single.isascii():
                # A cache hit is the very string that passed extract_credentials when it was
                # verified: its syntax need not be checked again.
                if single[:7].lower() == "bearer ":
                    token = single[7:]
                elif single[:5].lower() == "dpop ":
                    token, is_dpop = single[5:], True
                    if dpop_memo is not None:
                        claims, token_hash = dpop_memo.recall_dpop(single, self.verifier.generation)
                if claims is None:
                    claims = self._cached(token) if token else None
        if claims is None:
            looked_up = token
            if trace is not None:
                trace.check("credentials", authorization=len(authorization), query=bool(query))
            # One `Bearer ` or `DPoP ` value and no query: for a token of base64url and dots,
            # extract_credentials returns it as sliced above. The verifier reads it first
            # (unverified.read accepts nothing else), and extraction runs only when that read
            # refuses it (_verified_now): its refusal comes first, as it would have.
            if not (looked_up and len(looked_up) <= MAX_TOKEN_LENGTH and self._reads_jwts):
                token, is_dpop = extract_credentials(
                    authorization,
                    [name for name, _ in parse_qsl(query, keep_blank_values=True)] if query else (),
                )
            if trace is not None:
                trace.note(scheme="DPoP" if is_dpop else "Bearer")
            claims = self._cached(token) if token != looked_up else None
            if claims is None:
                presented = Presented(token, is_dpop, request, single)
                if trace is not None:
                    trace.check("token", is_cached=False)
                claims = self._verified_now(presented)
                if claims is None:
                    return self._admit_verified(
                        presented, identity, target, route, seen, memo, trace
                    )
        if trace is not None:  # a cache hit, or verified just now (the step recorded above)
            if trace.steps[-1].check == "token":
                trace.note(claims=claims)
            else:
                trace.check("token", claims=claims, is_cached=True)
        seen.claims = claims
        if presented is None:  # a cache hit, or the connection's DPoP memo
            presented = Presented(token, is_dpop, request, single, token_hash)
        memo = dpop_memo if is_dpop else memo
        return self._bind_and_authorize(claims, presented, identity, target, route, memo, trace)

    def _verified_now(self, presented: Presented) -> TokenClaims | None:
        """A JWT whose key is at hand, verified without a task (most misses); None when the
        token needs I/O first (an unknown kid, introspection)."""
        if not self._reads_jwts:
            return None
        try:
            return self.verifier.verify_now(presented.token)
        except AuthError as refusal:
            if (
                refusal.reason is Reason.INVALID_TOKEN
                and presented.authorization is not None
                and not is_compact(presented.token)
            ):
                # Not extracted yet (admit): a refusal of its syntax comes before "no JWT".
                malformed = _malformed(presented.authorization)
                if malformed is not None:
                    raise malformed from None
            if presented.is_dpop:  # RFC 9449 §7.1: answer in the scheme the client used
                refusal.dpop_algs = self._dpop_algs
            raise
        except Exception:  # as on the task path: a 500 and a log line, never a dead connection
            log.error("internal error verifying a token", exc_info=True)
            raise AuthError.internal() from None

    async def _admit_verified(
        self,
        presented: Presented,
        identity: ClientIdentity | None,
        target: str,
        route: Route | None,
        seen: Seen,
        memo: TokenMemo | None,
        trace: Trace | None,
    ) -> Admitted:
        try:
            claims = seen.claims = await self._verify(presented.token)
        except AuthError as refusal:
            if presented.is_dpop:  # RFC 9449 §7.1: answer in the scheme the client used
                refusal.dpop_algs = self._dpop_algs
            raise
        if trace is not None:
            trace.note(claims=claims)
        decision = self._bind_and_authorize(claims, presented, identity, target, route, memo, trace)
        return decision if isinstance(decision, Admitted) else await decision

    def _bind_and_authorize(
        self,
        claims: TokenClaims,
        presented: Presented,
        identity: ClientIdentity | None,
        target: str,
        route: Route | None,
        memo: TokenMemo | None,
        trace: Trace | None,
    ) -> Decision:
        mode = route.binding_mode if route else self.settings.binding.mode
        reported, is_bound, checked = None, False, None
        try:
            is_bound, checked = self._bind(claims, presented, identity, route, trace)
            binding = "bound" if is_bound else "unbound"
        except AuthError as failure:
            if mode != "report_only" or failure.reason is Reason.NO_CLIENT_CERT:
                # No certificate was never a report-only matter (it refused the handshake).
                raise
            # Rollout: count and log what enforce would have done, then go on.
            reported, binding = failure, "report_only_failed"
            if trace is not None:
                trace.reported(failure)
        if checked is not None:
            if checked.shared_key is not None:
                return self._record_then_authorize(
                    checked,
                    claims,
                    identity,
                    target,
                    route,
                    binding,
                    mode == "report_only",
                    trace,
                )
            nonce = checked.nonce
        else:
            nonce = reported.dpop_nonce if reported is not None else None
        authorization = presented.authorization
        if is_bound and memo is not None and authorization is not None and not presented.is_dpop:
            # Bound to this connection's certificate: true for every route, whatever its
            # allow_unbound_tokens or binding_mode say.
            memo.remember(
                authorization, claims, self.verifier.generation, self.verifier.leeway_for(claims)
            )
        elif checked is not None and memo is not None and authorization is not None:
            if presented.token_hash is None:  # a proof for it passed: its hash is right
                leeway = self.verifier.leeway_for(claims)
                generation = self.verifier.generation
                memo.remember_dpop(authorization, claims, generation, leeway, checked.token_hash)
        if trace is not None:
            self._trace_policy(trace, route)
        return self._authorize(claims, identity, target, route, binding, reported, nonce)

    async def _record_then_authorize(
        self,
        checked: CheckedProof,
        claims: TokenClaims,
        identity: ClientIdentity | None,
        target: str,
        route: Route | None,
        binding: str,
        report_only: bool,
        trace: Trace | None,
    ) -> Admitted:
        """The proof passed every check but the shared replay cache: ask it, then policy."""
        assert self.shared_replays is not None and checked.shared_key is not None
        reported = None
        if trace is not None:
            trace.check("replay cache", where=self.shared_replays.where)
        try:
            is_first = await self.shared_replays.first_use(checked.shared_key, checked.ttl)
        except ReplayCacheUnavailable as exc:
            is_first = self._unrecorded(str(exc))
        if not is_first:
            failure = AuthError(Reason.DPOP_REPLAYED, "DPoP proof jti was used before")
            failure.dpop_algs = self._dpop_algs
            if not report_only:
                raise failure
            reported, binding = failure, "report_only_failed"
            if trace is not None:
                trace.reported(failure)
        if trace is not None:
            self._trace_policy(trace, route)
        return self._authorize(claims, identity, target, route, binding, reported, checked.nonce)

    def _unrecorded(self, why: str) -> bool:
        """dpop.replay_cache_unavailable: True to accept the proof unrecorded, or raise."""
        outcome = "allowed" if self._unrecorded_allowed else "refused"
        metrics.DPOP_REPLAY_CACHE_FAILURES.labels(outcome=outcome).inc()
        now = time.monotonic()
        if now - self._replay_cache_logged >= 10:  # one line per 10 s, not one per request
            self._replay_cache_logged = now
            assert self.shared_replays is not None
            log.warning(
                "DPoP replay cache %s did not answer (%s): proofs are %s",
                self.shared_replays.where,
                why,
                "ACCEPTED unchecked for replay" if self._unrecorded_allowed else "refused (503)",
            )
        if self._unrecorded_allowed:
            return True
        raise AuthError(
            Reason.REPLAY_CACHE_UNAVAILABLE, "the DPoP replay cache is unavailable; try again"
        )

    def _bind(
        self,
        claims: TokenClaims,
        presented: Presented,
        identity: ClientIdentity | None,
        route: Route | None,
        trace: Trace | None,
    ) -> tuple[bool, CheckedProof | None]:
        """True when bound (to the certificate, to the DPoP key, or both as cnf says), False
        when unbound and the route allows it; raises AuthError otherwise. With a DPoP proof,
        also what is left to do about it."""
        cnf = claims.cnf
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        checked = None
        if trace is not None:
            trace.check("cnf", cnf=cnf, is_dpop=presented.is_dpop)
        try:
            if jkt is not None:
                if not presented.is_dpop:
                    # RFC 9449 §7.2: a DPoP-bound token must not be accepted as a bearer one.
                    raise AuthError(Reason.DPOP_TOKEN_AS_BEARER, "DPoP-bound token sent as Bearer")
                checked = self._check_proof(jkt, presented, claims, trace)
                if not (isinstance(cnf, dict) and "x5t#S256" in cnf):
                    return True, checked
            elif presented.is_dpop:
                raise AuthError(Reason.BEARER_TOKEN_AS_DPOP, "token is not DPoP-bound; use Bearer")
        except AuthError as failure:
            failure.dpop_algs = self._dpop_algs
            raise
        # cnf with jkt: x5t#S256 beside it must match too (it cannot be "unbound").
        allow_unbound = route.allow_unbound_tokens if route and jkt is None else False
        if trace is not None:
            trace.check("cnf.x5t#S256", identity=identity, allow_unbound=allow_unbound)
        if identity is None:
            # Nothing to bind to and no other proof of possession.
            raise AuthError(Reason.NO_CLIENT_CERT, _CERTLESS_REFUSAL)
        is_bound = check_binding(cnf, identity.thumbprint, allow_unbound=allow_unbound)
        if trace is not None:
            trace.note(is_bound=is_bound)
        return is_bound, checked

    def _check_proof(
        self, jkt: object, presented: Presented, claims: TokenClaims, trace: Trace | None
    ) -> CheckedProof:
        """RFC 9449 §4.3, §7.1 and §9: one proof, about this request and this token, by the key
        cnf.jkt names, with our nonce when asked for, and never seen before (here, or left to
        the shared replay cache)."""
        # A remembered token's jkt passed this before (it is remembered only then).
        if presented.token_hash is None and (
            not isinstance(jkt, str) or THUMBPRINT.fullmatch(jkt) is None
        ):
            raise AuthError(Reason.INVALID_CNF, "cnf jkt is not a base64url SHA-256 thumbprint")
        assert isinstance(jkt, str)
        token_hash = presented.token_hash or b64url_sha256(presented.token.encode("ascii"))
        request = presented.request
        proofs, hosts = request.values_of_both(b"dpop", b"host")  # a proof needs both
        if trace is not None:
            trace.check("DPoP header", count=len(proofs))
        if not proofs:
            raise AuthError(Reason.DPOP_PROOF_MISSING, "no DPoP proof header")
        if len(proofs) > 1:
            raise AuthError(Reason.DPOP_MULTIPLE_PROOFS, "more than one DPoP header")
        leeway = self.verifier.leeway_for(claims)
        max_age = float(self.settings.dpop.max_age_seconds)
        proof = verify_proof(
            proofs[0],
            method=request.method,
            url=self.request_url(request, trace, hosts),
            access_token=presented.token,
            token_hash=token_hash,
            algorithms=self._dpop_algorithms,
            max_age=max_age,
            leeway=leeway,
            trace=trace,
        )
        if trace is not None:
            trace.check("cnf.jkt", jkt=jkt, thumbprint=proof.thumbprint)
        check_key(jkt, proof)
        nonce = self.check_nonce(proof.nonce, trace)
        # Last, so only proofs that passed everything else take a place in the cache.
        key, expires = replay_key(jkt, proof.jti), proof.iat + max_age + leeway
        if trace is not None:
            trace.check(
                "replay", window=max_age + leeway, is_shared=self.shared_replays is not None
            )
        if self.shared_replays is not None:
            return CheckedProof(token_hash, nonce, key, expires - time.time())
        if not self.replays.first_use(key, expires):
            raise AuthError(Reason.DPOP_REPLAYED, "DPoP proof jti was used before")
        return CheckedProof(token_hash, nonce)

    def check_nonce(self, nonce: str | None, trace: Trace | None = None) -> str | None:
        """dpop.nonce (RFC 9449 §9): the new nonce to send when `nonce` is last period's, or
        None; raises AuthError for a missing or unknown one. Nothing to check without it."""
        if trace is not None:
            trace.check("nonce", nonce=nonce, is_required=self.nonces is not None)
        if self.nonces is None:
            return None
        fresh = self.nonces.check(nonce)
        if trace is not None:
            trace.note(is_renewed=fresh is not None)
        return fresh

    def request_url(
        self, request: Request, trace: Trace | None = None, hosts: list[str] | None = None
    ) -> str:
        """The URL the client used, as htu must name it (RFC 9449 §4.3 step 9). `hosts`: the
        request's Host values, when the caller has them already."""
        if hosts is None:
            hosts = request.values(b"host")
        if trace is not None:
            trace.check("request URL", base=self._dpop_base, hosts=hosts, request_path=request.path)
        if self._dpop_base:
            return self._dpop_base + request.path
        if len(hosts) != 1:
            raise AuthError(Reason.DPOP_WRONG_URL, "the request has no single Host header")
        return f"https://{hosts[0]}{request.path}"

    def _authorize(
        self,
        claims: TokenClaims,
        identity: ClientIdentity | None,
        target: str,
        route: Route | None,
        binding: str,
        reported: AuthError | None,
        dpop_nonce: str | None = None,
    ) -> Admitted:
        """Route policy, a step of its own: binding proves possession, not permission."""
        if route is not None:
            try:
                authorize(route, claims)
            except AuthError as refusal:
                if refusal.reason is Reason.WRONG_BINDING_KIND and route.binding == "dpop":
                    refusal.dpop_algs = self._dpop_algs  # RFC 9449 §7.1: ask for DPoP
                raise
        elif self.policy.is_enabled and not self.policy.unmatched_allowed:
            raise AuthError.no_route()
        return Admitted(identity, target, binding, claims, reported, dpop_nonce)

    def _trace_policy(self, trace: Trace, route: Route | None) -> None:
        """The policy step is next (recorded by _authorize's callers, so that the connection's
        memo path passes no trace to it)."""
        trace.check("policy", route=route, is_enabled=self.policy.is_enabled)

    def _identity(self, request: Request, from_tls: ClientIdentity | None) -> ClientIdentity | None:
        """From the TLS session, or from a header a trusted ingress set (client_cert.source)."""
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
            values = request.values(b"x-forwarded-client-cert")
            if len(values) > 1:
                raise AuthError(Reason.MALFORMED_REQUEST, "more than one X-Forwarded-Client-Cert")
            if not values:
                return None
            der, chain = parse_xfcc(values[0])
        else:
            values = request.values(b"client-cert")
            if len(values) > 1:
                raise AuthError(Reason.MALFORMED_REQUEST, "more than one Client-Cert header")
            if not values:
                return None
            chain_values = request.values(b"client-cert-chain")
            der, chain = parse_client_cert(values[0], ",".join(chain_values) or None)
        return self.forwarded_verifier.verify(der, chain)

    def _cached(self, token: str) -> TokenClaims | None:
        """Claims of a token verified before, when no I/O can be needed to decide."""
        if self._reads_jwts:
            return self.verifier.cached(token)
        return None

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

    def refused(self, request: Request, refusal: AuthError, seen: Seen) -> None:
        """Count and audit a refusal, by the checks or by the framing step."""
        issuer = refusal.issuer or (seen.claims.issuer_name if seen.claims else "")
        self.offer_schemes(refusal, seen)
        metrics.count(Outcome.REJECTED, refusal.reason, issuer)
        self._watch_replay(refusal, seen)
        self._audit(request, Outcome.REJECTED, refusal, seen)

    def offer_schemes(self, refusal: AuthError, seen: Seen) -> None:
        """The schemes the refusal's challenge offers: those the matched route takes (RFC 9449
        §7.1). Part of refused(), and on its own for explain (no metric, no audit line)."""
        offer_dpop(refusal, accepted_binding(self.policy, seen.route), self._dpop_algs)

    def upstream_failed(self, request: Request, fault: AuthError, seen: Seen) -> None:
        metrics.count(Outcome.UPSTREAM_ERROR, fault.reason, _issuer_of(seen))
        self._audit(request, Outcome.UPSTREAM_ERROR, fault, seen)

    def forwarded(self, request: Request, admitted: Admitted, seen: Seen, status: int) -> None:
        claims = admitted.claims
        if admitted.reported is not None:
            metrics.count(Outcome.REPORT_ONLY, admitted.reported.reason, _issuer_of(seen))
            self._watch_replay(admitted.reported, seen)
            self._audit(request, Outcome.REPORT_ONLY, admitted.reported, seen, status)
        else:
            self._forwarded_ok[claims.issuer_name if claims is not None else ""].inc()
            if self.settings.log.audit_accepted:
                self._audit(request, Outcome.FORWARDED, None, seen, status)

    def _watch_replay(self, refusal: AuthError, seen: Seen) -> None:
        """A token bound to another certificate: count it when it is the second foreign
        certificate within the window (replay.py); never with a token or thumbprint label."""
        claims, identity = seen.claims, seen.identity
        if refusal.reason is not Reason.THUMBPRINT_MISMATCH or claims is None or identity is None:
            return
        token = (claims.issuer_name, claims.token_id)
        if self.foreign.is_switch(token, identity.thumbprint, time.monotonic()):
            metrics.FOREIGN_CERTIFICATE_SWITCHES.labels(issuer=claims.issuer_name).inc()

    def _audit(
        self,
        request: Request,
        outcome: Outcome,
        refusal: AuthError | None,
        seen: Seen,
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
                remote=request.remote,
                thumbprint=identity.thumbprint if identity else "",
                cnf_thumbprint=expected[:64] if isinstance(expected, str) else "",
                jti=claims.jti[:128] if claims else "",
                sub=claims.subject[:256] if claims else "",
                client_id=claims.client_id[:256] if claims else "",
                iss=claims.issuer[:256] if claims else "",
                issuer=refusal.issuer if refusal and refusal.issuer else _issuer_of(seen),
                token_id=claims.token_id if claims else "",
            )
        )


class Presented(NamedTuple):
    """The credentials of one request: the token, its scheme, and what a proof is about."""

    token: str
    is_dpop: bool
    request: Request
    authorization: str | None  # the single Authorization value, for the TokenMemo
    token_hash: str | None = None  # ath of a DPoP-bound token the TokenMemo remembered


class CheckedProof(NamedTuple):
    """A DPoP proof that passed its checks: the token's hash (ath) it matched, the nonce to
    send back, and, with a shared replay cache, the key still to record there and for how
    long."""

    token_hash: str
    nonce: str | None
    shared_key: str | None = None
    ttl: float = 0.0


_CERTLESS_REFUSAL = "no client certificate, and the token is not DPoP-bound"


def _malformed(authorization: str) -> AuthError | None:
    """extract_credentials' refusal of one Authorization value and no query, if it has one."""
    try:
        extract_credentials([authorization], ())
    except AuthError as refusal:
        return refusal
    return None


def _issuer_of(seen: Seen) -> str:
    return seen.claims.issuer_name if seen.claims is not None else ""


def _normalised_target(raw_target: str) -> tuple[str, str]:
    """(request-target to forward, path to match): the forwarded path is the matched one."""
    raw_path, _, query = raw_target.partition("?")
    try:
        path = normalize_path(raw_path)
    except PathError as exc:
        raise AuthError.malformed(str(exc)) from None
    return (path + "?" + query if query else path), path

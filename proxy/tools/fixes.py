"""What to do about each refusal: the fix hints `certbound explain` prints under the check that
refused. Words only; the decision is the checks' (proxy/checks, proxy/tokens), never made here.

One hint per Reason (tests/test_explain_fixes.py holds every Reason to it), and a sharper one
for the checks that share a reason (the many ways a DPoP proof is invalid_dpop_proof). A hint
may name what the check saw, as {placeholders} filled from the trace's facts and explain's
view of the settings; a fact that is not there reads "(see above)", never an error.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from proxy.errors import Reason

FIXES: dict[Reason, str] = {
    Reason.NO_CLIENT_CERT: "the client must present its certificate; give it to explain with "
    "--cert CLIENT.pem (only a DPoP-bound token, or a public route, passes without one, and "
    "only with tls.client_cert: optional)",
    Reason.INVALID_CLIENT_CERT: "the certificate the ingress forwarded does not verify against "
    "tls.client_ca_file: check that the ingress forwards the client's certificate and that its "
    "CA is in that bundle",
    Reason.CLIENT_CERT_REVOKED: "the certificate's OCSP responder says revoked: issue the client "
    "a new certificate, and tokens bound to it",
    Reason.CLIENT_CERT_REVOCATION_UNKNOWN: "the OCSP responder did not answer: check that the "
    "proxy can reach it, or accept an unknown status with tls.revocation_unavailable: allow",
    Reason.NO_TOKEN: "send the access token as Authorization: Bearer TOKEN, or as "
    "Authorization: DPoP TOKEN with a DPoP proof header",
    Reason.MALFORMED_REQUEST: "the request breaks HTTP or RFC 6750 as the description says: "
    "one Authorization header with one token, no token in the query, an absolute path",
    Reason.BODY_TIMEOUT: "the client sent no request body byte for "
    "listen.body_timeout_seconds: look at the client (or what sits between it and the proxy), "
    "or raise that limit",
    Reason.HEADERS_TOO_LARGE: "the request line and headers exceed listen.max_header_bytes: "
    "send fewer or smaller headers, or raise that limit",
    Reason.UPGRADE_NOT_ALLOWED: "the protocol asked for in Upgrade is not in "
    "forwarding.upgrade_protocols: add it there if the workload speaks it",
    Reason.INVALID_TOKEN: "send the access token itself (not an ID or refresh token), unchanged: "
    "a JWT signed by a configured issuer, with claims of the right types",
    Reason.INVALID_SIGNATURE: "the token was not signed by a key of its issuer's key set: it was "
    "changed after signing, or the issuer's jwks_uri / jwks_file names other keys",
    Reason.INACTIVE_TOKEN: "the authorization server says the token is not active (revoked or "
    "expired): the client must get a new one",
    Reason.EXPIRED: "the token's exp has passed: the client must get a new token, and renew it "
    "before exp",
    Reason.LIFETIME_TOO_LONG: "exp - iat exceeds the issuer's max_lifetime_seconds: issue "
    "shorter-lived tokens, or raise that limit",
    Reason.NOT_YET_VALID: "the token's nbf or iat lies ahead: check the clocks of the "
    "authorization server and of this host, or raise the issuer's leeway_seconds",
    Reason.MISSING_CLAIM: "the authorization server must put the claim the description names "
    "into the token (exp, iss and aud are always required)",
    Reason.UNKNOWN_ISSUER: "the token's iss is none of the configured issuers ({issuers}): add "
    "its issuer under tokens.issuers, or send a token from one of those",
    Reason.WRONG_ISSUER: "the introspection answer names another issuer than the configured "
    "one: point the issuer's introspection endpoint at its own authorization server",
    Reason.WRONG_AUDIENCE: "the token's aud does not name this service ({audiences}): request "
    "the token for this audience (RFC 8707 resource), or fix the issuer's audience",
    Reason.WRONG_TYPE: "the issuer's require_typ_at_jwt asks for typ at+jwt (RFC 9068): issue "
    "access tokens with that header, or turn the requirement off",
    Reason.DISALLOWED_ALGORITHM: "the token's alg is not among its issuer's algorithms: sign with "
    "one of them, or add the algorithm to the issuer's algorithms",
    Reason.UNKNOWN_KEY: "no key of the issuer's key set has the token's kid (and type): the "
    "issuer signs with a key the proxy has not fetched yet, or the token comes from elsewhere",
    Reason.MISSING_CNF: "the authorization server must issue certificate-bound tokens for this "
    "client (cnf with x5t#S256, RFC 8705 §3), or the route must set allow_unbound_tokens",
    Reason.INVALID_CNF: "the token's cnf member must be a base64url SHA-256 thumbprint (43 "
    "characters, no padding): fix what the authorization server writes there",
    Reason.THUMBPRINT_MISMATCH: "the token was issued for another certificate: the client must "
    "present the certificate it got the token with, or get a new token with this one",
    Reason.DPOP_PROOF_MISSING: "a DPoP-bound token needs a DPoP header holding a proof made for "
    "this request (RFC 9449 §4)",
    Reason.DPOP_MULTIPLE_PROOFS: "send exactly one DPoP header, holding one proof",
    Reason.INVALID_DPOP_PROOF: "the DPoP header must hold one proof made for this request: a "
    "compact JWS with typ dpop+jwt, the client's public jwk, and jti, iat, htm, htu and ath",
    Reason.DPOP_DISALLOWED_ALGORITHM: "sign proofs with one of {dpop_algorithms}{or_add_it}",
    Reason.DPOP_PRIVATE_KEY: "the client sends its private key with every request: it must send "
    "the public key only, and treat this key as leaked (new key pair, new token)",
    Reason.DPOP_INVALID_SIGNATURE: "the proof must be signed by the private key of the jwk in its "
    "own header; this one was signed by another key, or changed after signing",
    Reason.DPOP_WRONG_METHOD: "the client must make a new proof for each request, with htm "
    "{method}",
    Reason.DPOP_WRONG_URL: "htu must be {expected_htu} ({htu_shape}, without query or fragment); "
    "the client used {htu_json}",
    Reason.DPOP_PROOF_EXPIRED: "the client must make a fresh proof for each request, and keep its "
    "clock right",
    Reason.DPOP_PROOF_NOT_YET_VALID: "the client's clock is ahead: fix its time synchronisation",
    Reason.DPOP_WRONG_ATH: "ath must be base64url (no padding) of SHA-256 of the very token sent "
    "with Authorization: DPoP, without the scheme{ath_case}",
    Reason.DPOP_REPLAYED: "every request needs a new proof with a new jti: the client must not "
    "send a proof twice, not even to retry",
    Reason.DPOP_NONCE_MISSING: "the client retries with the nonce of the DPoP-Nonce header of the "
    "401 (RFC 9449 §9); a client that keeps failing here does not read that header",
    Reason.DPOP_NONCE_INVALID: "the client retries with the nonce of the DPoP-Nonce header of the "
    "401; with several replicas, give them one dpop.nonce_secret_file",
    Reason.DPOP_KEY_MISMATCH: "the client must sign its proofs with the key the token was issued "
    "for (the one it showed the authorization server), or get a new token",
    Reason.DPOP_TOKEN_AS_BEARER: "the client sends it as Authorization: DPoP with a proof, never "
    "as Bearer (RFC 9449 §7.2)",
    Reason.BEARER_TOKEN_AS_DPOP: "send it as Authorization: Bearer, without a DPoP header",
    Reason.WRONG_BINDING_KIND: "this route takes only tokens bound the way its binding says: get "
    "such a token for this client, or change the route's binding",
    Reason.INSUFFICIENT_SCOPE: "request the token with every scope the route requires "
    "({route_scopes}), or change the route's scopes",
    Reason.CLIENT_NOT_ALLOWED: "the token's client_id is not among the route's clients: add it "
    "to the route, or call with a client that is",
    Reason.SUBJECT_NOT_ALLOWED: "the certificate's subject and URI SANs are none of the route's "
    "subjects: add one to the route, or use a certificate that is",
    Reason.NO_MATCHING_ROUTE: "no rule matches {method} {path} and policy.unmatched is deny: "
    "add a route for it",
    Reason.KEYS_UNAVAILABLE: "the issuer's keys could not be loaded: check that its jwks_uri (or "
    "discovery) answers from where the proxy runs, or that its jwks_file is readable",
    Reason.REPLAY_CACHE_UNAVAILABLE: "Redis (dpop.replay_cache) did not answer: check it, or "
    "accept proofs unrecorded with dpop.replay_cache_unavailable: allow",
    Reason.INTROSPECTION_UNAVAILABLE: "the introspection endpoint did not answer: check that the "
    "proxy can reach it and that its client credentials are right",
    Reason.UPSTREAM_CONNECT: "the workload did not accept the connection: check upstream.url and "
    "that the workload listens there",
    Reason.UPSTREAM_TIMEOUT: "the workload did not answer within upstream.timeout_seconds: look "
    "at the workload, or raise that limit",
    Reason.UPSTREAM_RESET: "the workload closed the connection before its answer ended: look at "
    "the workload's log",
    Reason.INTERNAL_ERROR: "the proxy failed: its log holds the error; the request was not "
    "forwarded",
}

# Sharper hints where one reason has several checks behind it (keyed by the trace's step name).
CHECK_FIXES: dict[tuple[Reason, str], str] = {
    (Reason.INVALID_DPOP_PROOF, "length"): "the DPoP header must hold the proof alone: one "
    "compact JWS",
    (Reason.INVALID_DPOP_PROOF, "JWS form"): "the DPoP header must hold one compact JWS: "
    "header.payload.signature",
    (Reason.INVALID_DPOP_PROOF, "typ"): "the client must set the proof's JWS header typ to "
    "dpop+jwt (RFC 9449 §4.2)",
    (Reason.INVALID_DPOP_PROOF, "jwk"): "the proof's JWS header must carry the client's public "
    "key as jwk",
    (Reason.INVALID_DPOP_PROOF, "thumbprint"): "the jwk must be a complete EC, RSA or OKP public "
    "key",
    (Reason.INVALID_DPOP_PROOF, "key"): "sign with an algorithm of the key's type (ES256 for EC "
    "P-256, PS256/RS256 for RSA)",
    (Reason.INVALID_DPOP_PROOF, "signature"): "send the proof exactly as the client made it: its "
    "parts do not decode",
    (Reason.INVALID_DPOP_PROOF, "jti"): "every proof needs a unique jti string of 1 to 256 "
    "characters",
    (Reason.INVALID_DPOP_PROOF, "iat"): "iat must be the proof's creation time in seconds since "
    "the epoch (a number)",
    (Reason.DPOP_WRONG_URL, "request URL"): "the request must carry exactly one Host header, or "
    "set dpop.external_base_url to the URL clients use",
    (Reason.INVALID_CNF, "cnf"): "the token's cnf.jkt must be the RFC 7638 thumbprint of the "
    "client's DPoP key (base64url SHA-256, 43 characters)",
    (Reason.NO_CLIENT_CERT, "subject"): "this route names certificate subjects: the client must "
    "present its certificate (give it to explain with --cert CLIENT.pem)",
}


class _Facts(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "(see above)"


def fix_for(reason: Reason, check: str, facts: Mapping[str, object]) -> str:
    """The hint for `reason` given by the check named `check`, filled in from `facts`."""
    template = CHECK_FIXES.get((reason, check)) or FIXES[reason]
    return string.Formatter().vformat(template, (), _Facts(facts))

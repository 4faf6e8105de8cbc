"""Reasons, decisions and the one refusal type, turned into RFC 6750 responses here.

Every step of the request path reports with a `Reason`; the same spelling is used in the
error description, the audit log and the metric label.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    FORWARDED = "forwarded"
    REJECTED = "rejected"
    REPORT_ONLY = "report_only"  # would have been rejected; forwarded because of report_only
    UPSTREAM_ERROR = "upstream_error"


class Reason(enum.Enum):
    OK = "ok"
    NO_CLIENT_CERT = "no_client_cert"
    INVALID_CLIENT_CERT = "invalid_client_cert"
    CLIENT_CERT_REVOKED = "client_cert_revoked"  # tls.ocsp: the responder said revoked
    CLIENT_CERT_REVOCATION_UNKNOWN = "client_cert_revocation_unknown"  # tls.ocsp: no answer
    NO_TOKEN = "no_token"  # noqa: S105 - a reason name, not a secret
    MALFORMED_REQUEST = "malformed_request"
    HEADERS_TOO_LARGE = "headers_too_large"
    BODY_TIMEOUT = "body_timeout"  # the request body stalled (listen.body_timeout_seconds)
    UPGRADE_NOT_ALLOWED = "upgrade_not_allowed"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a reason name, not a secret
    INVALID_SIGNATURE = "invalid_signature"
    INACTIVE_TOKEN = "inactive_token"  # noqa: S105 - a reason name, not a secret
    EXPIRED = "expired"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    NOT_YET_VALID = "not_yet_valid"
    MISSING_CLAIM = "missing_claim"
    UNKNOWN_ISSUER = "unknown_issuer"  # the token's iss names no configured issuer
    WRONG_ISSUER = "wrong_issuer"  # an introspection answer names another issuer
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_TYPE = "wrong_type"
    DISALLOWED_ALGORITHM = "disallowed_algorithm"
    UNKNOWN_KEY = "unknown_key"
    MISSING_CNF = "missing_cnf"
    INVALID_CNF = "invalid_cnf"
    THUMBPRINT_MISMATCH = "thumbprint_mismatch"
    # DPoP (RFC 9449): the proof, then the token's use of it.
    DPOP_PROOF_MISSING = "dpop_proof_missing"
    DPOP_MULTIPLE_PROOFS = "dpop_multiple_proofs"
    INVALID_DPOP_PROOF = "invalid_dpop_proof"
    DPOP_DISALLOWED_ALGORITHM = "dpop_disallowed_algorithm"
    DPOP_PRIVATE_KEY = "dpop_private_key"
    DPOP_INVALID_SIGNATURE = "dpop_invalid_signature"
    DPOP_WRONG_METHOD = "dpop_wrong_method"
    DPOP_WRONG_URL = "dpop_wrong_url"
    DPOP_PROOF_EXPIRED = "dpop_proof_expired"
    DPOP_PROOF_NOT_YET_VALID = "dpop_proof_not_yet_valid"
    DPOP_WRONG_ATH = "dpop_wrong_ath"
    DPOP_REPLAYED = "dpop_replayed"
    DPOP_NONCE_MISSING = "dpop_nonce_missing"  # dpop.nonce: the proof carries none
    DPOP_NONCE_INVALID = "dpop_nonce_invalid"  # not one we issued, or from an old period
    DPOP_KEY_MISMATCH = "dpop_key_mismatch"
    DPOP_TOKEN_AS_BEARER = "dpop_token_as_bearer"  # noqa: S105 - a reason name, not a secret
    BEARER_TOKEN_AS_DPOP = "bearer_token_as_dpop"  # noqa: S105 - a reason name, not a secret
    WRONG_BINDING_KIND = "wrong_binding_kind"  # a route's binding: mtls | dpop
    INSUFFICIENT_SCOPE = "insufficient_scope"
    CLIENT_NOT_ALLOWED = "client_not_allowed"
    SUBJECT_NOT_ALLOWED = "subject_not_allowed"
    NO_MATCHING_ROUTE = "no_matching_route"
    KEYS_UNAVAILABLE = "keys_unavailable"
    REPLAY_CACHE_UNAVAILABLE = "replay_cache_unavailable"  # dpop.replay_cache did not answer
    INTROSPECTION_UNAVAILABLE = "introspection_unavailable"
    UPSTREAM_CONNECT = "upstream_connect"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_RESET = "upstream_reset"
    INTERNAL_ERROR = "internal_error"


class HandshakeFailure(enum.Enum):
    """Why a connection on the mTLS listener ended before its first request was read."""

    NO_CERTIFICATE = "no_certificate"
    UNKNOWN_CA = "unknown_ca"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    BAD_PURPOSE = "bad_purpose"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation_unknown"
    STRICT_VIOLATION = "strict_violation"
    CHAIN_TOO_LONG = "chain_too_long"  # more intermediates than tls.verify_depth
    UNPARSEABLE_CERTIFICATE = "unparseable_certificate"  # OpenSSL took it, cryptography cannot
    PROTOCOL_VERSION = "protocol_version"
    NOT_TLS = "not_tls"
    TIMEOUT = "timeout"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    error: str | None  # RFC 6750 §3.1 error code; None means "no error attribute"


_INVALID_TOKEN = Refusal(401, "invalid_token")
_INVALID_PROOF = Refusal(401, "invalid_dpop_proof")  # RFC 9449 §7.1

# RFC 6750 §3.1: no credentials -> bare challenge; malformed -> 400; bad token -> 401;
# RFC 8705 §3: a thumbprint mismatch is invalid_token with 401, like any other bad token.
_POLICY = Refusal(403, "insufficient_scope")

REFUSALS: dict[Reason, Refusal] = {
    # Without a verified certificate there is nothing to bind the token to (RFC 8705 §3).
    Reason.NO_CLIENT_CERT: _INVALID_TOKEN,
    Reason.INVALID_CLIENT_CERT: _INVALID_TOKEN,
    # A token bound to a revoked certificate is as bad as an unbound one (RFC 8705 §3); an
    # unknown status refused by tls.revocation_unavailable is answered the same way.
    Reason.CLIENT_CERT_REVOKED: _INVALID_TOKEN,
    Reason.CLIENT_CERT_REVOCATION_UNKNOWN: _INVALID_TOKEN,
    Reason.NO_TOKEN: Refusal(401, None),
    Reason.MALFORMED_REQUEST: Refusal(400, "invalid_request"),
    # RFC 6585 §5; not an authentication problem, so no challenge.
    Reason.HEADERS_TOO_LARGE: Refusal(431, None),
    Reason.UPGRADE_NOT_ALLOWED: Refusal(400, "invalid_request"),
    # RFC 9110 §15.5.9: the client did not send the rest of its request in time.
    Reason.BODY_TIMEOUT: Refusal(408, None),
    Reason.INVALID_TOKEN: _INVALID_TOKEN,
    Reason.INVALID_SIGNATURE: _INVALID_TOKEN,
    Reason.INACTIVE_TOKEN: _INVALID_TOKEN,
    Reason.EXPIRED: _INVALID_TOKEN,
    Reason.LIFETIME_TOO_LONG: _INVALID_TOKEN,
    Reason.NOT_YET_VALID: _INVALID_TOKEN,
    Reason.MISSING_CLAIM: _INVALID_TOKEN,
    Reason.UNKNOWN_ISSUER: _INVALID_TOKEN,
    Reason.WRONG_ISSUER: _INVALID_TOKEN,
    Reason.WRONG_AUDIENCE: _INVALID_TOKEN,
    Reason.WRONG_TYPE: _INVALID_TOKEN,
    Reason.DISALLOWED_ALGORITHM: _INVALID_TOKEN,
    Reason.UNKNOWN_KEY: _INVALID_TOKEN,
    Reason.MISSING_CNF: _INVALID_TOKEN,
    Reason.INVALID_CNF: _INVALID_TOKEN,
    Reason.THUMBPRINT_MISMATCH: _INVALID_TOKEN,
    Reason.DPOP_PROOF_MISSING: _INVALID_PROOF,
    Reason.DPOP_MULTIPLE_PROOFS: _INVALID_PROOF,
    Reason.INVALID_DPOP_PROOF: _INVALID_PROOF,
    Reason.DPOP_DISALLOWED_ALGORITHM: _INVALID_PROOF,
    Reason.DPOP_PRIVATE_KEY: _INVALID_PROOF,
    Reason.DPOP_INVALID_SIGNATURE: _INVALID_PROOF,
    Reason.DPOP_WRONG_METHOD: _INVALID_PROOF,
    Reason.DPOP_WRONG_URL: _INVALID_PROOF,
    Reason.DPOP_PROOF_EXPIRED: _INVALID_PROOF,
    Reason.DPOP_PROOF_NOT_YET_VALID: _INVALID_PROOF,
    Reason.DPOP_WRONG_ATH: _INVALID_PROOF,
    Reason.DPOP_REPLAYED: _INVALID_PROOF,
    # RFC 9449 §9: the client retries with the nonce sent in the DPoP-Nonce header.
    Reason.DPOP_NONCE_MISSING: Refusal(401, "use_dpop_nonce"),
    Reason.DPOP_NONCE_INVALID: Refusal(401, "use_dpop_nonce"),
    # A genuine proof by a key the token does not name, and the scheme confusions of RFC 9449
    # §7.2: the token is what cannot be used this way, so invalid_token.
    Reason.DPOP_KEY_MISMATCH: _INVALID_TOKEN,
    Reason.DPOP_TOKEN_AS_BEARER: _INVALID_TOKEN,
    Reason.BEARER_TOKEN_AS_DPOP: _INVALID_TOKEN,
    # This token can never be used here, whoever holds it: not a permission (scope) matter.
    Reason.WRONG_BINDING_KIND: _INVALID_TOKEN,
    # RFC 6750 §3.1 has one code for "authenticated but not permitted".
    Reason.INSUFFICIENT_SCOPE: _POLICY,
    Reason.CLIENT_NOT_ALLOWED: _POLICY,
    Reason.SUBJECT_NOT_ALLOWED: _POLICY,
    Reason.NO_MATCHING_ROUTE: _POLICY,
    # The token may be fine; we could not check it. Our fault, never an accept.
    Reason.KEYS_UNAVAILABLE: Refusal(503, None),
    Reason.REPLAY_CACHE_UNAVAILABLE: Refusal(503, None),
    Reason.INTROSPECTION_UNAVAILABLE: Refusal(503, None),
    Reason.UPSTREAM_CONNECT: Refusal(502, None),
    Reason.UPSTREAM_RESET: Refusal(502, None),
    Reason.UPSTREAM_TIMEOUT: Refusal(504, None),
    Reason.INTERNAL_ERROR: Refusal(500, None),
}


class AuthError(Exception):
    """A refusal. `description` is shown to the client, so it must never contain a secret."""

    def __init__(self, reason: Reason, description: str, *, scope: str | None = None) -> None:
        super().__init__(f"{reason.value}: {description}")
        self.reason = reason
        self.description = description
        self.scope = scope
        self.issuer = ""  # the configured issuer's name, once the token's iss picked one
        # Set when the refusal concerns DPoP: the challenge is then `DPoP ..., algs="..."`.
        self.dpop_algs: str | None = None
        # Set when the route accepts DPoP beside Bearer: a `DPoP algs="..."` challenge follows
        # the Bearer one (offer_dpop).
        self.dpop_offer: str | None = None
        self.dpop_nonce: str | None = None  # sent as DPoP-Nonce with a use_dpop_nonce refusal

    @property
    def refusal(self) -> Refusal:
        return REFUSALS[self.reason]

    @classmethod
    def malformed(cls, description: str) -> AuthError:
        return cls(Reason.MALFORMED_REQUEST, description)

    @classmethod
    def internal(cls) -> AuthError:
        return cls(Reason.INTERNAL_ERROR, "the proxy failed; the request was not forwarded")

    @classmethod
    def no_route(cls) -> AuthError:
        return cls(Reason.NO_MATCHING_ROUTE, "no route rule allows this request")


def _quote(value: str) -> str:
    # RFC 6750 §3: error_description is restricted to %x20-21 / %x23-5B / %x5D-7E.
    return "".join(c for c in value if 0x20 <= ord(c) <= 0x7E and c not in '"\\')


def offer_dpop(error: AuthError, accepts: str, algs: str) -> None:
    """RFC 9449 §7.1: tell the client which schemes the route takes. `accepts` is the route's
    `binding` (any | mtls | dpop; "" when the refusal came before a route was found): a `dpop`
    route challenges in the DPoP scheme only, an `any` one with Bearer and DPoP."""
    if accepts == "dpop":
        if error.dpop_algs is None:
            error.dpop_algs = algs
    elif accepts == "any":
        error.dpop_offer = algs


def challenge(error: AuthError) -> str | None:
    """The WWW-Authenticate value for a refusal, or None when the status is not 401/403."""
    refusal = error.refusal
    if refusal.status not in (400, 401, 403):
        return None
    parts = []
    if refusal.error is not None:
        parts = [f'error="{refusal.error}"', f'error_description="{_quote(error.description)}"']
        if error.scope is not None:
            parts.append(f'scope="{_quote(error.scope)}"')
    if error.dpop_algs is not None:
        # RFC 9449 §7.1: the DPoP scheme, with the algorithms a proof may use.
        return "DPoP " + ", ".join([*parts, f'algs="{error.dpop_algs}"'])
    # RFC 6750 §3: no error attribute when the request had no credentials.
    bearer = "Bearer " + ", ".join(parts) if parts else "Bearer"
    if error.dpop_offer is not None:
        # RFC 9110 §11.6.1: several challenges in one field, comma-separated.
        return f'{bearer}, DPoP algs="{error.dpop_offer}"'
    return bearer


def error_parts(error: AuthError) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of the answer to a refusal; framing is the caller's job."""
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    value = challenge(error)
    if value is not None:
        headers.append(("WWW-Authenticate", value))
    if error.dpop_nonce is not None:
        headers.append(("DPoP-Nonce", error.dpop_nonce))
    body = f"{error.refusal.status} {error.reason.value}: {_quote(error.description)}\n"
    return error.refusal.status, headers, body.encode("ascii")

"""PyJWT's rules for the registered claims (RFC 7519 §4.1), as jwt.decode applies them after
the signature: the same checks, in the same order, raising the same PyJWT exceptions. Pure.

Restated from PyJWT 2.x's PyJWT._validate_claims because that method is a third of what a
token-cache miss spends around its signature (option lookups, an ABC instance check, a
datetime per call); here the merged options are read once per options object.
tests/test_signature_differential.py keeps jwt.decode as the oracle: for every token both
accept, or both refuse with the same exception type.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from datetime import timedelta
from typing import Any, NamedTuple

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError


class ClaimRules(NamedTuple):
    """What a merged PyJWT options dictionary asks of the claims."""

    require: tuple[str, ...]
    verify_iat: bool
    verify_nbf: bool
    verify_exp: bool
    verify_iss: bool
    verify_aud: bool
    strict_aud: bool
    verify_sub: bool
    verify_jti: bool


def rules_of(options: Mapping[str, Any]) -> ClaimRules:
    """The rules of options merged over PyJWT's defaults (every key present)."""
    return ClaimRules(
        tuple(options["require"]),
        bool(options["verify_iat"]),
        bool(options["verify_nbf"]),
        bool(options["verify_exp"]),
        bool(options["verify_iss"]),
        bool(options["verify_aud"]),
        bool(options.get("strict_aud", False)),
        bool(options["verify_sub"]),
        bool(options["verify_jti"]),
    )


def validate(
    payload: dict[str, Any],
    rules: ClaimRules,
    audience: Iterable[str] | str | None,
    issuer: Container[str] | str | None,
    leeway: float | timedelta,
    now: float,
) -> None:
    """PyJWT._validate_claims(payload, options, audience, issuer, leeway=leeway) with the
    clock read by the caller (`now`, POSIX seconds)."""
    if isinstance(leeway, timedelta):
        leeway = leeway.total_seconds()
    if audience is not None and not isinstance(audience, str | tuple | list | Iterable):
        raise TypeError("audience must be a string, iterable or None")
    for claim in rules.require:
        if payload.get(claim) is None:
            raise jwt.MissingRequiredClaimError(claim)
    if rules.verify_iat and "iat" in payload:
        try:
            iat = int(payload["iat"])
        except (ValueError, TypeError, OverflowError):
            raise jwt.InvalidIssuedAtError("Issued At claim (iat) must be an integer.") from None
        if iat > now + leeway:
            raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    if rules.verify_nbf and "nbf" in payload:
        try:
            nbf = int(payload["nbf"])
        except (ValueError, TypeError, OverflowError):
            raise jwt.DecodeError("Not Before claim (nbf) must be an integer.") from None
        if nbf > now + leeway:
            raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    if rules.verify_exp and "exp" in payload:
        try:
            exp = int(payload["exp"])
        except (ValueError, TypeError, OverflowError):
            raise jwt.DecodeError("Expiration Time claim (exp) must be an integer.") from None
        if exp <= now - leeway:
            raise jwt.ExpiredSignatureError("Signature has expired")
    # The usual token names its issuer and one of our audiences as strings: what the rules
    # below conclude for it, decided by the first comparison.
    if rules.verify_iss and issuer is not None:
        iss = payload.get("iss")
        if not (type(iss) is str and type(issuer) is str and iss == issuer):
            _validate_iss(payload, issuer)
    if rules.verify_aud:
        aud = payload.get("aud")
        if not (
            type(aud) is str
            and aud
            and not rules.strict_aud
            and type(audience) is tuple
            and aud in audience
        ):
            _validate_aud(payload, audience, strict=rules.strict_aud)
    if rules.verify_sub and "sub" in payload and not isinstance(payload["sub"], str):
        raise InvalidSubjectError("Subject must be a string")
    if rules.verify_jti and "jti" in payload and not isinstance(payload["jti"], str):
        raise InvalidJTIError("JWT ID must be a string")


def _validate_iss(payload: dict[str, Any], issuer: Container[str] | str) -> None:
    if "iss" not in payload:
        raise jwt.MissingRequiredClaimError("iss")
    iss = payload["iss"]
    if not isinstance(iss, str):
        raise jwt.InvalidIssuerError("Payload Issuer (iss) must be a string")
    if isinstance(issuer, str):
        if iss != issuer:
            raise jwt.InvalidIssuerError("Invalid issuer")
        return
    try:
        if iss not in issuer:
            raise jwt.InvalidIssuerError("Invalid issuer")
    except TypeError:
        raise jwt.InvalidIssuerError('Issuer param must be "str" or "Container[str]"') from None


def _validate_aud(
    payload: dict[str, Any], audience: Iterable[str] | str | None, *, strict: bool
) -> None:
    claimed = payload.get("aud")
    if audience is None:
        if "aud" not in payload or not claimed:
            return
        raise jwt.InvalidAudienceError("Invalid audience")
    if "aud" not in payload or not claimed:
        raise jwt.MissingRequiredClaimError("aud")
    if strict:
        if not isinstance(audience, str):
            raise jwt.InvalidAudienceError("Invalid audience (strict)")
        if not isinstance(claimed, str):
            raise jwt.InvalidAudienceError("Invalid claim format in token (strict)")
        if audience != claimed:
            raise jwt.InvalidAudienceError("Audience doesn't match (strict)")
        return
    if isinstance(claimed, str):
        claimed = [claimed]
    if not isinstance(claimed, list):
        raise jwt.InvalidAudienceError("Invalid claim format in token")
    for value in claimed:
        if not isinstance(value, str):
            raise jwt.InvalidAudienceError("Invalid claim format in token")
    if isinstance(audience, str):
        audience = [audience]
    for value in audience:
        if value in claimed:
            return
    raise jwt.InvalidAudienceError("Audience doesn't match")

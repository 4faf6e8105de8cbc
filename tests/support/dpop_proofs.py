"""DPoP proofs as a client makes them (PyJWT and cryptography keys), for the tests: the RFC 7638
thumbprint a token's cnf.jkt names, ath, and a proof. Written independently of
proxy/tokens/dpop.py, so the tests do not check the proxy against itself."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638, as a client library computes it (EC and RSA keys)."""
    names = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    members = {k: jwk[k] for k in names}
    return b64url(
        hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()
    )


def ath_of(token: str) -> str:
    return b64url(hashlib.sha256(token.encode()).digest())


def public_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        return jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)


def make_proof(
    key: Any,
    jwk: dict[str, Any],
    *,
    htm: str,
    htu: str,
    token: str,
    alg: str = "ES256",
    signer: Any = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A fresh proof for one request; a claim given as None is left out."""
    body = {
        "jti": uuid.uuid4().hex,
        "htm": htm,
        "htu": htu,
        "iat": int(time.time()),
        "ath": ath_of(token),
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    hdr = {"typ": "dpop+jwt", "jwk": jwk, **(header or {})}
    return jwt.encode(body, signer or key, algorithm=alg, headers=hdr)

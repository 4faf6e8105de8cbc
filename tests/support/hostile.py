"""Helpers for the hostile-input catalogue (its fixtures are in tests/hostile/conftest.py): a
"bait" HTTP server that counts every hit (for jku/x5u/kid URLs that must never be fetched),
extra client certificates (an intermediate chain, a thumbprint with - and _), and raw JWS and
challenge helpers."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.tools.pki import Issued
from tests.support.stack import (
    NO_CREDENTIALS,
)


@dataclass
class Bait:
    """A real HTTP server that serves an attacker's JWKS and counts every request."""

    url: str = ""
    hits: list[str] = field(default_factory=list)
    rogue: Any = None  # the attacker's private key (EC)

    def jwk(self, kid: str = "rogue") -> dict[str, Any]:
        value = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.rogue.public_key()))
        value.update(kid=kid, use="sig")
        return value

    def app(self) -> web.Application:
        async def any_path(request: web.Request) -> web.Response:
            self.hits.append(request.raw_path)
            return web.json_response({"keys": [self.jwk()]})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_path)
        return app


@dataclass(frozen=True)
class ExtraCerts:
    carol: Issued  # thumbprint contains both "-" and "_"
    intermediate: Issued  # an intermediate CA under the test CA
    dave: Issued  # leaf signed by the intermediate; dave.pem holds leaf + intermediate


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: object) -> str:
    return b64url(json.dumps(obj).encode())


def sign_raw(header: object, payload: str | bytes, key: Any) -> str:
    """A JWS over exactly these header/payload bytes, signed with `key` (EC -> ES256,
    RSA -> RS256, bytes -> HS256), whatever the header claims."""
    body = payload.encode() if isinstance(payload, str) else payload
    signing_input = f"{b64json(header)}.{b64url(body)}".encode()
    if isinstance(key, bytes):
        sig = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
            signing_input, key
        )
    elif isinstance(key, rsa.RSAPrivateKey):
        sig = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(
            signing_input, key
        )
    else:
        sig = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(signing_input, key)
    return f"{signing_input.decode()}.{b64url(sig)}"


def www(headers: dict[str, str]) -> str | None:
    return headers.get("WWW-Authenticate")


def assert_challenge(value: str | None, error: str | None, scheme: str = "Bearer") -> None:
    """error=None: the bare RFC 6750 challenge, with RFC 9449 §7.1's DPoP one beside it (no
    policy: every route takes both); otherwise exactly that error code (in the DPoP scheme for
    refusals about DPoP)."""
    assert value is not None, "no WWW-Authenticate header"
    if error is None:
        assert value == NO_CREDENTIALS
    else:
        assert value.startswith(f'{scheme} error="{error}", error_description="'), value

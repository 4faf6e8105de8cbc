"""DPoP clients of a running certbound: one key pair and a token bound to it each, a fresh
proof per request (RFC 9449)."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.dpop_proofs import make_proof, public_jwk, thumbprint
from tests.support.process import ProxyProcess
from tests.support.stack import PKI, Issuer, Running


class Client:
    """A DPoP client: one key pair, a token bound to it, a fresh proof per request."""

    def __init__(self, running: Running, key: Any = None) -> None:
        self.running = running
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.jwk = public_jwk(self.key)
        self.token = running.issuer.mint(cnf={"jkt": thumbprint(self.jwk)})

    def url(self, path: str = "/orders") -> str:
        return self.running.url + path

    def proof(
        self,
        htm: str = "GET",
        htu: str | None = None,
        *,
        token: str | None = None,
        alg: str = "ES256",
        signer: Any = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        return make_proof(
            self.key,
            self.jwk,
            htm=htm,
            htu=htu or self.url(),
            token=token or self.token,
            alg=alg,
            signer=signer,
            header=header,
            **claims,
        )

    async def send(
        self,
        proofs: list[str],
        *,
        method: str = "GET",
        path: str = "/orders",
        scheme: str = "DPoP",
        token: str | None = None,
        who: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = [("Authorization", f"{scheme} {token or self.token}")]
        headers += [("DPoP", p) for p in proofs]
        return await self.running.request(method, path, who=who, headers=headers)


# What proofs name as htu when replicas sit behind one name, as in a Service.
BASE = "https://orders.example"


class Holder:
    """A DPoP client of the replicas: one key, one token bound to it."""

    def __init__(self, issuer: Issuer, pki: PKI) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = public_jwk(self.key)
        self.token = issuer.mint(cnf={"jkt": thumbprint(self.jwk)})
        self.pki = pki
        self.body = b""
        self.headers: dict[str, str] = {}

    def proof(self, path: str = "/orders", nonce: str | None = None) -> str:
        return make_proof(
            self.key, self.jwk, htm="GET", htu=BASE + path, token=self.token, nonce=nonce
        )

    async def get(self, replica: ProxyProcess, proof: str) -> int:
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.pki.ca_file))
        headers = {"Authorization": f"DPoP {self.token}", "DPoP": proof}
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(replica.url + "/orders", headers=headers) as resp,
        ):
            self.body = await resp.read()
            self.headers = dict(resp.headers)
            return resp.status

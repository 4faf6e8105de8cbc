"""The checks alone, in one process: CPU microseconds of Pipeline.admit for a token the
connection's memo remembers (hit), for a token verified every time (tokens.cache_size: 0,
miss), and of the bare signature check, for ES256 and RS256; and a DPoP request (a DPoP-bound
token, no client certificate, a new ES256 proof every call, the in-process replay cache) beside
the ES256 hit and the bare verification of its proof. Prints JSON; bench/tokens.py runs it
pinned to the SUT's CPU (with PYTHONPATH set to compare another checkout's proxy/).

CPU time (time.process_time), best of many short rounds: the machine's other load cannot add
to it, so the ratios are steady where wall-clock figures are not. A miss that the checkout
under test turns into a coroutine is driven by hand (send(None)) without a task: a task's cost
is not counted here, only in bench/tokens.py's whole-request figures.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import sys
import tempfile
import time
import timeit
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from proxy.checks.pipeline import Pipeline, Seen, TokenMemo
from proxy.checks.request import Request
from proxy.settings import Settings, TLSSettings, TokenSettings, trusted_issuers
from proxy.tokens.dpop import b64url_sha256, jwk_thumbprint
from proxy.tokens.issuers import Issuers
from proxy.tokens.jwt import JWTVerifier, TokenCache
from proxy.tools.demo import make_pki
from proxy.trust.identity import identity_from_der

ISSUER = "https://issuer.bench.local"
AUDIENCE = "https://bench.certbound.local"
ROUNDS, REPEAT = 300, 30


def cpu_microseconds(work: Any) -> float:
    best = min(timeit.repeat(work, number=ROUNDS, repeat=REPEAT, timer=time.process_time))
    return best / ROUNDS * 1e6


def bare(alg: str, key: Any, token: str) -> float:
    signing_input, _, signature = token.rpartition(".")
    data = signing_input.encode("ascii")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    public = key.public_key()
    if alg == "RS256":
        pkcs1 = padding.PKCS1v15()
        return cpu_microseconds(lambda: public.verify(raw, data, pkcs1, hashes.SHA256()))
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    return cpu_microseconds(lambda: public.verify(der, data, ec.ECDSA(hashes.SHA256())))


def decided(decision: Any) -> Any:
    if not inspect.iscoroutine(decision):
        return decision
    try:
        decision.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the miss waited for I/O")


async def measure(directory: Path) -> dict[str, dict[str, float]]:
    pki = make_pki(directory)
    identity = identity_from_der(pki.alice.cert_der)
    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as http:
        for alg in ("ES256", "RS256"):
            if alg == "RS256":
                key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                family: Any = jwt.algorithms.RSAAlgorithm
            else:
                key, family = ec.generate_private_key(ec.SECP256R1()), jwt.algorithms.ECAlgorithm
            public = json.loads(family.to_jwk(key.public_key()))
            public.update(kid="bench", use="sig")
            jwks = directory / f"{alg}.json"
            jwks.write_text(json.dumps({"keys": [public]}))
            now = int(time.time())
            claims = {
                "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "bench",
                "scope": "read", "iat": now, "nbf": now, "exp": now + 3600,
                "jti": uuid.uuid4().hex, "cnf": {"x5t#S256": identity.thumbprint},
            }  # fmt: skip
            token = jwt.encode(claims, key, algorithm=alg, headers={"kid": "bench"})
            headers = ((b"Host", b"localhost"), (b"Authorization", f"Bearer {token}".encode()))
            request = Request("GET", "/x", headers, (b"host", b"authorization"), "127.0.0.1")
            figures = {"bare": bare(alg, key, token)}
            for case, size in (("hit", 10000), ("miss", 0)):
                tokens = TokenSettings(
                    issuer=ISSUER, audience=(AUDIENCE,), jwks_file=str(jwks),
                    algorithms=(alg,), cache_size=size,
                )  # fmt: skip
                cache = TokenCache(size)
                keys = Issuers(tuple(trusted_issuers(tokens)), tokens, http, cache.clear)
                await keys.refresh()
                pipeline = Pipeline(
                    settings=replace(Settings(), tokens=tokens),
                    verifier=JWTVerifier(keys, cache),
                    introspector=None,
                    issuer_names=keys.names,
                )
                memo = TokenMemo()

                def admit(
                    p: Pipeline = pipeline, m: TokenMemo = memo, r: Request = request
                ) -> None:
                    decided(p.admit(r, identity, Seen(), m))

                admit()
                figures[case] = cpu_microseconds(admit)
            out[alg] = figures
        out["DPoP"] = await dpop(http, directory, identity, out["ES256"]["hit"])
    return out


async def dpop(
    http: aiohttp.ClientSession, directory: Path, identity: Any, bearer_hit: float
) -> dict[str, float]:
    """Pipeline.admit for a DPoP request with a proof never seen before on every call, beside
    the ES256 cached Bearer request (`hit`, measured above) and the bare check of a proof."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(issuer_key.public_key()))
    public.update(kid="bench", use="sig")
    jwks = directory / "dpop.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    client_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(client_key.public_key()))
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "dpop-client", "client_id": "bench",
        "scope": "read", "iat": now, "nbf": now, "exp": now + 3600,
        "jti": uuid.uuid4().hex, "cnf": {"jkt": jwk_thumbprint(jwk)},
    }  # fmt: skip
    token = jwt.encode(claims, issuer_key, algorithm="ES256", headers={"kid": "bench"})
    ath = b64url_sha256(token.encode())
    names = (b"host", b"authorization", b"dpop")

    def request() -> Request:
        proof = jwt.encode(
            {"jti": uuid.uuid4().hex, "htm": "GET", "htu": "https://localhost/x", "iat": now,
             "ath": ath},
            client_key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk},
        )  # fmt: skip
        headers = (
            (b"Host", b"localhost"),
            (b"Authorization", f"DPoP {token}".encode()),
            (b"DPoP", proof.encode()),
        )
        return Request("GET", "/x", headers, names, "127.0.0.1")

    # Signed ahead (the client's cost): one per call, none used twice (that would be a replay).
    requests = iter([request() for _ in range(ROUNDS * REPEAT + 1)])
    tokens = TokenSettings(
        issuer=ISSUER, audience=(AUDIENCE,), jwks_file=str(jwks), algorithms=("ES256",)
    )
    cache = TokenCache(tokens.cache_size)
    keys = Issuers(tuple(trusted_issuers(tokens)), tokens, http, cache.clear)
    await keys.refresh()
    pipeline = Pipeline(
        settings=replace(Settings(), tokens=tokens, tls=TLSSettings(client_cert="optional")),
        verifier=JWTVerifier(keys, cache),
        introspector=None,
        issuer_names=keys.names,
    )

    memo = TokenMemo()  # one kept-alive connection, as the hit's

    def admit() -> None:
        decided(pipeline.admit(next(requests), None, Seen(), memo))

    admit()  # the token is verified once and cached, as on a kept-alive client's first request
    proof = request().values(b"dpop")[0]
    return {
        "hit": bearer_hit,
        "dpop": cpu_microseconds(admit),
        "bare": bare("ES256", client_key, proof),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="certbound-token-checks-") as tmp:
        print(json.dumps(asyncio.run(measure(Path(tmp)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

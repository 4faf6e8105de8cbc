"""What the checks cost per request, without sockets: `Pipeline.admit` on a cached, mTLS-bound
token, timed in a loop. For changes to the checks themselves (a trace hook, a new step), where
the whole-proxy runs of bench/run.py are too noisy to see a few hundred nanoseconds.

    .venv/bin/python bench/checks.py [--rounds 9] [--calls 100000]

Two paths, both synchronous (no await): (memo) a kept-alive connection sending the same
Authorization value again, answered from its TokenMemo; (cache) the same token on a connection
without a memo, answered from the verified-token cache plus the binding and policy steps. And
(proof) `dpop.verify_proof` on one ES256 proof, the DPoP check every DPoP request pays. Prints
the best round's nanoseconds of CPU per call (this thread's CPU time, so that other processes
on a shared machine weigh less); compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.checks.pipeline import Admitted, Pipeline, Seen, TokenMemo
from proxy.checks.request import Request
from proxy.config import load_settings
from proxy.settings import trusted_issuers
from proxy.tokens.dpop import b64url_sha256, verify_proof
from proxy.tokens.issuers import Issuers
from proxy.tokens.jwt import JWTVerifier, TokenCache
from proxy.trust.identity import ClientIdentity, identity_from_der

try:
    from bench import harness as h
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]


def per_call_ns(
    pipeline: Pipeline, request: Request, identity: ClientIdentity, memo: bool, calls: int
) -> float:
    admit = pipeline.admit
    connection_memo = TokenMemo() if memo else None
    assert isinstance(admit(request, identity, Seen(), connection_memo), Admitted)
    start = time.thread_time()
    for _ in range(calls):
        admit(request, identity, Seen(), connection_memo)
    return (time.thread_time() - start) / calls * 1e9


def proof_ns(token: str, calls: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    url, now = "https://orders.example/orders/7", time.time()
    claims = {
        "jti": "j-1",
        "htm": "GET",
        "htu": url,
        "iat": int(now),
        "ath": b64url_sha256(token.encode()),
    }
    proof = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk})
    algorithms = frozenset({"ES256"})
    start = time.thread_time()
    for _ in range(calls):
        verify_proof(
            proof, method="GET", url=url, access_token=token, algorithms=algorithms,
            max_age=300, leeway=30, now=now,
        )  # fmt: skip
    return (time.thread_time() - start) / calls * 1e9


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cb-checks-") as scratch:
        m = h.make_material(Path(scratch), 1)
        config = m.dir / "certbound.yaml"
        config.write_text(h.certbound_config(m, 0, 0, 9, 10_000))
        settings = load_settings(str(config))
        async with aiohttp.ClientSession() as session:
            issuers = Issuers(trusted_issuers(settings.tokens), settings.tokens, session)
            await issuers.refresh()
            cache = TokenCache(settings.tokens.cache_size)
            pipeline = Pipeline(settings, JWTVerifier(issuers, cache), None, None, issuers.names)
            token = m.token_one.read_text().strip()
            request = Request(
                "GET",
                "/orders/7",
                ((b"Host", b"orders.example"), (b"Authorization", b"Bearer " + token.encode())),
                (b"host", b"authorization"),
                "127.0.0.1",
            )
            alice = x509.load_pem_x509_certificate(m.alice_cert.read_bytes())
            identity = identity_from_der(alice.public_bytes(Encoding.DER))
            decision = pipeline.admit(request, identity, Seen())
            if not isinstance(decision, Admitted):  # a cache miss may need a task
                await decision  # verified once: in the cache from now on
            for name, memo in (("memo", True), ("cache", False)):
                rounds = [
                    per_call_ns(pipeline, request, identity, memo, args.calls)
                    for _ in range(args.rounds)
                ]
                print(f"{name:<6} best {min(rounds):7.0f} ns/call  median "
                      f"{sorted(rounds)[len(rounds) // 2]:7.0f} ns/call")  # fmt: skip
            # A signature check costs ~1,000 times an admit: fewer calls per round.
            rounds = [proof_ns(token, max(args.calls // 100, 10)) for _ in range(args.rounds)]
            print(f"proof  best {min(rounds):7.0f} ns/call  median "
                  f"{sorted(rounds)[len(rounds) // 2]:7.0f} ns/call")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())

"""What DPoP costs: requests per busy core with a fresh proof on every request, with the
in-process replay cache and with a Redis shared by replicas, beside mTLS-bound bearer requests,
all measured in one run.

    .venv/bin/python bench/dpop.py            # ~2 minutes
    .venv/bin/python bench/dpop.py --quick    # smoke test, < 40 s

Needs `redis-server` (Debian package redis-server) and util-linux `taskset`. Prints a markdown
table; a full run also writes it to bench/results/dpop-latest.md.

Three systems under test, one `certbound run` each, pinned to CPU 0:
  (d) mTLS-bound token sent as Bearer over a connection with alice's certificate (bench/run.py's
      column d): the token memo makes the checks a few microseconds per request
  (g) DPoP-bound token (cnf.jkt), no client certificate (tls.client_cert: optional), a new
      ES256 proof per request, jti remembered in the process
  (h) as (g), jti recorded in Redis (dpop.replay_cache: redis://), one SET NX PX per request
The load generator (bench/loadgen.py), the upstream and redis-server share CPU 1. Proofs are
signed ahead of each run (they are the client's cost, not the proxy's) and each is used once;
a proof used twice would be a replay and show up as a non-200.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

try:
    from bench import harness as h
    from bench import run as bench_run
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]
    import run as bench_run  # type: ignore[no-redef]

from proxy.tokens.dpop import jwk_thumbprint
from proxy.tools.demo import Issuer
from proxy.trust.identity import compute_thumbprint

PATH = "/x"
HTU = "https://localhost" + PATH  # the load generator sends Host: localhost


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Client:
    """The DPoP client's side, done ahead: one key, one token bound to it, proofs."""

    def __init__(self, issuer: Issuer) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        now = int(time.time())
        claims = {
            "iss": issuer.url,
            "sub": "dpop-client",
            "aud": h.AUDIENCE,
            "client_id": "bench",
            "iat": now,
            "nbf": now,
            "exp": now + 7200,
            "jti": uuid.uuid4().hex,
            "cnf": {"jkt": jwk_thumbprint(self.jwk)},
        }
        self.token = jwt.encode(
            claims, issuer.key, algorithm="ES256", headers={"kid": issuer.kid, "typ": "at+jwt"}
        )
        self.ath = b64(hashlib.sha256(self.token.encode()).digest())

    def proofs(self, path: Path, count: int) -> Path:
        header = {"typ": "dpop+jwt", "jwk": self.jwk}
        now = int(time.time())
        with path.open("w") as out:
            for _ in range(count):
                claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": HTU, "iat": now}
                claims["ath"] = self.ath
                out.write(jwt.encode(claims, self.key, algorithm="ES256", headers=header) + "\n")
        return path


def config(
    m: h.Material, jwks: Path, upstream: int, extra: str, *, alg: str = "ES256",
    cache_size: int = 10000,
) -> tuple[str, int, int]:  # fmt: skip
    """certbound's config for these benches (client certificates optional, for DPoP clients):
    its text, data port and admin port. bench/tokens.py uses it too."""
    port, admin = h.free_port(), h.free_port()
    text = f"""\
listen: {{host: "127.0.0.1", port: {port}}}
tls:
  cert_file: "{m.server_cert}"
  key_file: "{m.server_key}"
  client_ca_file: "{m.ca}"
  client_cert: optional
upstream: {{url: "http://127.0.0.1:{upstream}"}}
tokens:
  issuer: "{h.ISSUER}"
  audience: "{h.AUDIENCE}"
  jwks_file: "{jwks}"
  algorithms: ["{alg}"]
  cache_size: {cache_size}
admin: {{host: "127.0.0.1", port: {admin}}}
log: {{level: "warning"}}
{extra}"""
    return text, port, admin


def start_redis(procs: h.Procs, directory: Path) -> tuple[Any, int]:
    port = h.free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--dir", str(directory)]
    proc = procs.start(cmd, h.LOAD_CPU, directory / "redis.log")
    h.wait_port(port)
    return proc, port


def measure(
    pid: int, url: str, m: h.Material, plan: dict[str, float], *, dpop: Client | None,
    tokens: Path, redis_pid: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    who = "" if dpop else "alice"
    per_second = 9000  # above any DPoP rate one core reaches: no proof is used twice

    def proofs(name: str, seconds: float) -> Path | None:
        if dpop is None:
            return None
        return dpop.proofs(m.dir / f"{name}.txt", int(seconds * per_second) + 100)

    def load(name: str, **kw: Any) -> dict[str, Any]:
        seconds = kw["duration"]
        return h.loadgen(url, m, who=who, tokens=tokens, proofs=proofs(name, seconds), **kw)

    load("warm", duration=plan["warm"])
    sat_proofs = proofs("sat", plan["sat"])
    c0 = h.cpu_seconds(pid)
    r0 = h.cpu_seconds(redis_pid) if redis_pid else 0.0
    sat = h.loadgen(url, m, who=who, tokens=tokens, proofs=sat_proofs, duration=plan["sat"])
    cpu = h.cpu_seconds(pid) - c0
    redis_cpu = (h.cpu_seconds(redis_pid) - r0) if redis_pid else None
    lat = load("lat", mode="open", rate=200.0, duration=plan["lat"])
    requests = max(sat["requests"], 1)
    return {
        "rps": sat["rps"],
        "busy": cpu / sat["elapsed"],
        "cpu_per_10k": cpu / requests * 10000,
        "redis_per_10k": redis_cpu / requests * 10000 if redis_cpu is not None else None,
        "p50": lat["p50_ms"],
        "p99": lat["p99_ms"],
        "bad": sum(n for run in (sat, lat) for s, n in run["statuses"].items() if s != "200")
        + sum(n for run in (sat, lat) for n in run["errors"].values()),
    }


def render(res: dict[str, dict[str, Any]]) -> str:
    d, g, hh = res["d"], res["g"], res["h"]

    def f(v: float | None, digits: int = 0) -> str:
        return "n/a" if v is None else f"{v:,.{digits}f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if not a or not b else f"{a / b:.2f}x"

    per_core = {k: 10000 / v["cpu_per_10k"] for k, v in res.items()}
    rows = [
        ("req/s at saturation (32 keep-alive conns)", "rps", 0),
        ("SUT CPU busy at saturation (% of its core)", "busy%", 0),
        ("CPU s per 10k requests (certbound)", "cpu_per_10k", 3),
        ("CPU s per 10k requests (redis-server)", "redis_per_10k", 3),
        ("p50 latency ms at 200 req/s open loop", "p50", 3),
        ("p99 latency ms at 200 req/s open loop", "p99", 3),
        ("non-200 responses + errors", "bad", 0),
    ]
    out = [
        "| metric | (d) mTLS-bound, Bearer | (g) DPoP, local replay cache "
        "| (h) DPoP, Redis replay cache | g/d | h/g |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, digits in rows:
        if key == "busy%":
            vals = [v["busy"] * 100 for v in (d, g, hh)]
        else:
            vals = [v[key] for v in (d, g, hh)]
        out.append(
            f"| {label} | {f(vals[0], digits)} | {f(vals[1], digits)} | {f(vals[2], digits)} "
            f"| {ratio(vals[1], vals[0])} | {ratio(vals[2], vals[1])} |"
        )
    out.insert(
        5,
        f"| req/s per fully busy core (= 10k / CPU s per 10k) | {f(per_core['d'])} "
        f"| {f(per_core['g'])} | {f(per_core['h'])} | {ratio(per_core['g'], per_core['d'])} "
        f"| {ratio(per_core['h'], per_core['g'])} |",
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    plan = {"warm": 1.0, "sat": 4.0, "lat": 3.0} if args.quick else {
        "warm": 3.0, "sat": 20.0, "lat": 15.0,
    }  # fmt: skip
    for tool in ("taskset", "redis-server"):
        if shutil.which(tool) is None:
            print(f"bench/dpop.py needs {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="certbound-dpop-bench-") as tmp:
        directory = Path(tmp)
        m = h.make_material(directory, 1)
        issuer = Issuer(ec.generate_private_key(ec.SECP256R1()), "bench-dpop", h.ISSUER)
        jwks = directory / "dpop-jwks.json"
        jwks.write_text(json.dumps(issuer.jwks()))
        bearer = directory / "bearer.txt"
        alice = x509.load_pem_x509_certificate(m.alice_cert.read_bytes())
        thumb = compute_thumbprint(alice.public_bytes(Encoding.DER))
        bearer.write_text(issuer.mint(thumb, subject="alice", audience=h.AUDIENCE, ttl=7200))
        client = Client(issuer)
        dpop_token = directory / "dpop-token.txt"
        dpop_token.write_text(client.token + "\n")
        procs = h.Procs()
        res: dict[str, dict[str, Any]] = {}
        try:
            _, upstream = h.start_upstream(procs, m, h.LOAD_CPU, "upstream")
            redis, redis_port = start_redis(procs, directory)
            cases = {
                "d": ("", None, bearer, None),
                "g": ("", client, dpop_token, None),
                "h": (
                    f'dpop: {{replay_cache: "redis://127.0.0.1:{redis_port}/0"}}\n',
                    client,
                    dpop_token,
                    redis.pid,
                ),
            }
            for name, (extra, dpop, tokens, redis_pid) in cases.items():
                text, port, admin = config(m, jwks, upstream, extra)
                cfg = directory / f"{name}.yaml"
                cfg.write_text(text)
                proc = procs.start(
                    [h.CERTBOUND, "run", "--config", str(cfg)], h.SUT_CPU, directory / f"{name}.log"
                )
                h.wait_http(f"http://127.0.0.1:{admin}/readyz")
                url = f"https://127.0.0.1:{port}{PATH}"
                print(f"[{name}] measuring", file=sys.stderr)
                res[name] = measure(
                    proc.pid, url, m, plan, dpop=dpop, tokens=tokens, redis_pid=redis_pid
                )
                procs.stop(proc)
        finally:
            procs.close()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = render(res)
    text = f"# certbound DPoP bench, {stamp}\n\n{bench_run.environment()}\n{table}\n"
    print(text)
    if not args.quick:  # a smoke test's figures are not worth keeping
        (h.BENCH / "results" / "dpop-latest.md").write_text(text)
    return 0 if all(r["bad"] == 0 for r in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

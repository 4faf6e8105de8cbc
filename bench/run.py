"""certbound benchmark: one command, one run, one markdown table of ratios.

    .venv/bin/python bench/run.py            # full run, ~4-5 minutes
    .venv/bin/python bench/run.py --quick    # smoke test, < 60 s

Prints the table to stdout and writes it to bench/results/latest.md (with date, nproc, CPU
model, Python/aiohttp versions). Needs `nginx` (Debian package) and util-linux `taskset`.

The same load goes through five systems under test (SUT), started one at a time:
  (a) the tiny upstream directly (plain HTTP)              bench/upstream.py
  (b) nginx: mTLS termination, ssl_verify_client on, proxy_pass with upstream keepalive
  (c) a naive aiohttp forwarder with mTLS and no checks    bench/naive_forwarder.py
  (d) certbound, full checks (ES256 JWT bound to the client cert), `certbound run --config`
  (e) certbound with the verified-token cache off (tokens.cache_size: 0)
  (f) certbound's data plane with every check off                 bench/forwarder_only.py

Load generator: bench/loadgen.py, our own (raw asyncio + ssl, uvloop, keep-alive, no
pipelining), because none of the Debian tools can present a client certificate on every
connection and also vary the token per request or hold an open-loop rate: wrk has no
client-certificate option (not even through its Lua API), h2load has none either, and ab -E
does present one but speaks HTTP/1.0 with a fixed header set and closed loop only.

Pinning (2 cores): the SUT gets CPU 0 alone (`taskset -c 0`); the load generator and the
shared upstream run on CPU 1 (`taskset -c 1`). For (a) a second upstream instance is the SUT
on CPU 0. The "SUT CPU busy" row says how much of its core the SUT used at saturation: well
under 100% means the load generator (one Python core) was the limit, not the SUT, so read the
CPU-per-request rows (which do not depend on saturation) for those columns.

Measurements per SUT: saturation req/s with 32 keep-alive connections for N s; CPU seconds
of the SUT process(es) per 10k requests (utime+stime from /proc/<pid>/stat, nginx master +
worker summed); p50/p99 latency at an open-loop 200 req/s (measured from the intended send
time); new TLS connections/s with one request per connection; peak RSS (VmHWM). For certbound
also a many-distinct-tokens run (every request a different token: cache misses) and a
security check: alice's token presented with bob's certificate must be 100% rejected. And an
idle row: 1,000 kept-alive mTLS connections held open (bench/idle.py) while the latency and
saturation runs repeat on other connections; certbound's peak RSS is read after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

try:
    from bench import harness as h
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]


@dataclass(frozen=True)
class Plan:
    warm: float
    sat: float
    lat: float
    newconn: float
    distinct: float
    security: float
    tokens: int
    concurrency: int = 32
    rate: float = 200.0
    newconn_concurrency: int = 16


FULL = Plan(warm=3, sat=20, lat=15, newconn=10, distinct=15, security=5, tokens=12000)
QUICK = Plan(warm=0.5, sat=2.5, lat=2, newconn=1.5, distinct=2, security=1, tokens=2500)
IDLE_CONNECTIONS = 1000


def measure(pid: int, url: str, m: h.Material, plan: Plan, *, tls: bool) -> dict[str, Any]:
    r: dict[str, Any] = {}
    h.loadgen(url, m, duration=plan.warm, concurrency=plan.concurrency)
    c0 = h.cpu_seconds(pid)
    sat = h.loadgen(url, m, duration=plan.sat, concurrency=plan.concurrency)
    cpu = h.cpu_seconds(pid) - c0
    r["sat"] = sat
    r["rps"] = sat["rps"]
    r["cpu_per_10k"] = cpu / max(sat["requests"], 1) * 10000
    r["busy"] = cpu / sat["elapsed"]
    lat = h.loadgen(url, m, mode="open", rate=plan.rate, duration=plan.lat)
    r["lat"] = lat
    c0 = h.cpu_seconds(pid)
    nc = h.loadgen(url, m, mode="newconn", concurrency=plan.newconn_concurrency,
                   duration=plan.newconn)  # fmt: skip
    cpu = h.cpu_seconds(pid) - c0
    r["nc"] = nc
    r["nc_cpu_per_1k"] = cpu / max(nc["requests"], 1) * 1000
    r["nc_busy"] = cpu / nc["elapsed"]
    r["hwm_mb"] = h.status_kb(pid, "VmHWM") / 1024
    r["bad"] = sum(
        n for run in (sat, lat, nc) for s, n in run["statuses"].items() if s != "200"
    ) + sum(n for run in (sat, lat, nc) for n in run["errors"].values())
    r["tls"] = tls
    return r


def measure_with_idle(pid: int, url: str, m: h.Material, plan: Plan) -> dict[str, Any]:
    """Saturation and latency again, on other connections, while IDLE_CONNECTIONS stay open."""
    holder = h.hold_idle(url, m, IDLE_CONNECTIONS)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        held = int(holder.stdout.readline().split()[1])
        sat = h.loadgen(url, m, duration=plan.sat, concurrency=plan.concurrency)
        lat = h.loadgen(url, m, mode="open", rate=plan.rate, duration=plan.lat)
        hwm = h.status_kb(pid, "VmHWM") / 1024
        holder.stdin.close()
        still = int(holder.stdout.readline().split()[1])
    finally:
        holder.kill()
        holder.wait()
    return {"held": held, "still": still, "sat": sat, "lat": lat, "hwm_mb": hwm}


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def render(res: dict[str, dict[str, Any]], extra: dict[str, Any], plan: Plan) -> str:
    cols = ["a", "b", "c", "d", "e", "f"]
    names = {
        "a": "(a) upstream direct",
        "b": "(b) nginx mTLS",
        "c": "(c) naive aiohttp",
        "d": "(d) certbound",
        "e": "(e) certbound no cache",
        "f": "(f) data plane, checks off",
    }
    rows: list[tuple[str, Any, int]] = [
        (f"req/s at saturation ({plan.concurrency} keep-alive conns, {plan.sat:g}s)",
         lambda r: r["rps"], 0),
        ("SUT CPU busy at saturation (% of its one core)", lambda r: r["busy"] * 100, 0),
        ("CPU s per 10k requests (SUT processes)", lambda r: r["cpu_per_10k"], 3),
        ("req/s per fully busy core (= 10k / CPU s per 10k)",
         lambda r: 10000 / r["cpu_per_10k"] if r["cpu_per_10k"] else None, 0),
        (f"p50 latency ms at {plan.rate:g} req/s open loop", lambda r: r["lat"]["p50_ms"], 3),
        (f"p99 latency ms at {plan.rate:g} req/s open loop", lambda r: r["lat"]["p99_ms"], 3),
        (f"new connections/s (1 request each, {plan.newconn_concurrency} conc.)",
         lambda r: r["nc"]["rps"], 0),
        ("SUT CPU busy during new connections (%)", lambda r: r["nc_busy"] * 100, 0),
        ("CPU s per 1k new connections", lambda r: r["nc_cpu_per_1k"], 3),
        ("peak RSS MB (VmHWM, summed over processes)", lambda r: r["hwm_mb"], 1),
        ("non-200 responses + errors (all runs above)", lambda r: r["bad"], 0),
    ]  # fmt: skip
    head = "| metric | " + " | ".join(names[c] for c in cols) + " | d/b | d/c | d/e | d/f |"
    lines = [head, "|" + "---|" * (len(cols) + 5)]
    for label, get, digits in rows:
        vals = {c: (get(res[c]) if c in res else None) for c in cols}
        cells = [_fmt(vals[c], digits) for c in cols]
        ratios = [_ratio(vals["d"], vals[x]) for x in ("b", "c", "e", "f")]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    out = ["## Throughput, CPU, latency, memory", "", *lines, ""]
    out.append("(a) is plain HTTP (its new-connection row is TCP only); (b)-(e) are mTLS with a "
               "client certificate on every connection, TLS 1.3. Ratios are d divided by the "
               "other column: above 1 is better for req/s, worse for CPU, latency and RSS. "
               "Where the SUT was not ~100% busy at saturation the load generator was the "
               "limit; compare 'req/s per fully busy core' instead.")  # fmt: skip
    dt_ = extra.get("distinct", {})
    out += [
        "",
        "## Many distinct tokens (every request a different token: cache misses)",
        "",
        "| case | req/s | CPU s per 10k req | SUT CPU busy % | non-200 |",
        "|---|---|---|---|---|",
    ]
    for label, r in (
        ("(d) certbound, same token every request (cache hits)", dt_.get("same")),
        (f"(d) certbound, {extra['tokens']} distinct tokens round-robin", dt_.get("many")),
        ("(e) certbound, cache off, same token", dt_.get("nocache")),
    ):
        if r is None:
            continue
        out.append(
            f"| {label} | {_fmt(r['rps'], 0)} | {_fmt(r['cpu_per_10k'], 3)} | "
            f"{_fmt(r['busy'] * 100, 0)} | {r['bad']} |"
        )
    if "many" in dt_:
        out.append(f"\nRSS of (d) after the distinct-token run (cache full): VmHWM "
                   f"{dt_['many']['hwm_mb']:.1f} MB")  # fmt: skip
    idle = extra.get("idle")
    if idle is not None:
        base = res["d"]
        out += [
            "",
            f"## {IDLE_CONNECTIONS:,} idle keep-alive mTLS connections held open (certbound (d))",
            "",
            "| | without | with the idle connections |",
            "|---|---|---|",
            f"| connections held open (after the runs) | n/a | {idle['held']} ({idle['still']} "
            "still open at the end) |",
            f"| req/s at saturation on other connections | {_fmt(base['rps'], 0)} | "
            f"{_fmt(idle['sat']['rps'], 0)} |",
            f"| p50 / p99 latency ms at {plan.rate:g} req/s | {_fmt(base['lat']['p50_ms'], 3)} / "
            f"{_fmt(base['lat']['p99_ms'], 3)} | {_fmt(idle['lat']['p50_ms'], 3)} / "
            f"{_fmt(idle['lat']['p99_ms'], 3)} |",
            f"| peak RSS MB (VmHWM) | {_fmt(base['hwm_mb'], 1)} | {_fmt(idle['hwm_mb'], 1)} |",
        ]
    sec = extra.get("security")
    if sec is None:
        return "\n".join(out)
    total = sum(sec["statuses"].values())
    ok = sec["statuses"].get("200", 0)
    verdict = "PASS: 100% rejected" if total > 0 and ok == 0 and not sec["errors"] else "FAIL"
    out += [
        "",
        "## Security check: alice's token presented with bob's certificate (certbound (d))",
        "",
        f"requests: {total}; statuses: {sec['statuses']}; transport errors: {sec['errors']}; "
        f"**{verdict}**",
        "",
    ]
    return "\n".join(out)


def environment() -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    try:
        ngx = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True, check=False)
        nginx = ngx.stderr.strip()
    except OSError:
        nginx = "nginx not installed"
    try:
        uv = version("uvloop")
    except Exception:
        uv = "not installed"
    return (
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}\n"
        f"- nproc: {nproc}; CPU: {cpu}\n"
        f"- python {platform.python_version()}, aiohttp {version('aiohttp')}, "
        f"PyJWT {version('PyJWT')}, cryptography {version('cryptography')}, "
        f"uvloop {uv} (load generator, upstream and certbound: listen.event_loop auto)\n"
        f"- {nginx}; OpenSSL via python: {__import__('ssl').OPENSSL_VERSION}\n"
        f"- pinning: SUT on CPU {h.SUT_CPU}; load generator + upstream on CPU {h.LOAD_CPU}\n"
        f"- certbound source: {_revision()}\n"
    )


def _revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(h.REPO), *args], capture_output=True,
                              text=True, check=False)  # fmt: skip
        return done.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "proxy")
    import proxy

    where = Path(proxy.__file__).resolve().parent
    note = " + uncommitted changes in proxy/" if dirty else ""
    return f"git {rev}{note} (imported from {where})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="certbound benchmark (see module docstring)")
    p.add_argument("--quick", action="store_true", help="smoke test, < 60 s")
    p.add_argument("--out", default=str(h.BENCH / "results" / "latest.md"))
    p.add_argument("--only", default="abcdef", help="subset of the SUTs, e.g. --only def")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if shutil.which("taskset") is None or not Path("/usr/sbin/nginx").exists():
        print("needs taskset (util-linux) and nginx (apt-get install nginx)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="certbound-bench-"))
    procs = h.Procs()
    res: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {"tokens": plan.tokens}
    started = dt.datetime.now()

    def log(msg: str) -> None:
        secs = (dt.datetime.now() - started).total_seconds()
        print(f"[{secs:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        m = h.make_material(tmp, plan.tokens)
        log(f"PKI, JWKS and {plan.tokens} tokens in {tmp}")
        _, up_port = h.start_upstream(procs, m, h.LOAD_CPU, "upstream")
        path = "/bench/resource"

        if "a" in args.only:
            log("(a) upstream direct")
            proc, port = h.start_upstream(procs, m, h.SUT_CPU, "direct")
            res["a"] = measure(proc.pid, f"http://127.0.0.1:{port}{path}", m, plan, tls=False)
            procs.stop(proc)

        if "b" in args.only:
            log("(b) nginx")
            proc, port = h.start_nginx(procs, m, up_port)
            res["b"] = measure(proc.pid, f"https://127.0.0.1:{port}{path}", m, plan, tls=True)
            procs.stop(proc)

        if "c" in args.only:
            log("(c) naive aiohttp forwarder")
            proc, port = h.start_naive(procs, m, up_port)
            res["c"] = measure(proc.pid, f"https://127.0.0.1:{port}{path}", m, plan, tls=True)
            procs.stop(proc)

        extra["distinct"] = {}
        if "d" in args.only:
            log("(d) certbound")
            proc, port = h.start_certbound(procs, m, up_port, 10000, "certbound")
            url = f"https://127.0.0.1:{port}{path}"
            res["d"] = measure(proc.pid, url, m, plan, tls=True)
            log("(d) certbound: distinct tokens")
            extra["distinct"]["same"] = res["d"]
            c0 = h.cpu_seconds(proc.pid)
            many = h.loadgen(url, m, duration=plan.distinct, tokens=m.token_many)
            cpu = h.cpu_seconds(proc.pid) - c0
            extra["distinct"]["many"] = {
                "rps": many["rps"],
                "cpu_per_10k": cpu / max(many["requests"], 1) * 10000,
                "busy": cpu / many["elapsed"],
                "bad": sum(n for s, n in many["statuses"].items() if s != "200")
                + sum(many["errors"].values()),
                "hwm_mb": h.status_kb(proc.pid, "VmHWM") / 1024,
            }
            log("(d) certbound: security check (bob's cert, alice's token)")
            extra["security"] = h.loadgen(url, m, duration=plan.security, concurrency=8, who="bob")
            log(f"(d) certbound: {IDLE_CONNECTIONS} idle connections held open")
            extra["idle"] = measure_with_idle(proc.pid, url, m, plan)
            procs.stop(proc)

        if "f" in args.only:
            log("(f) data plane with every check off")
            proc, port = h.start_forwarder_only(procs, m, up_port)
            res["f"] = measure(proc.pid, f"https://127.0.0.1:{port}{path}", m, plan, tls=True)
            procs.stop(proc)

        if "e" in args.only:
            log("(e) certbound, cache_size 0")
            proc, port = h.start_certbound(procs, m, up_port, 0, "certbound-nocache")
            res["e"] = measure(proc.pid, f"https://127.0.0.1:{port}{path}", m, plan, tls=True)
            extra["distinct"]["nocache"] = res["e"]
            procs.stop(proc)
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)

    mode = "quick (--quick: short runs, noisy)" if args.quick else "full"
    report = (
        f"# certbound benchmark ({mode})\n\n{environment()}\n"
        f"{render(res, extra, plan)}\n"
        f"Command: `.venv/bin/python bench/run.py{' --quick' if args.quick else ''}`; "
        f"load generator bench/loadgen.py; wall time {(dt.datetime.now() - started).seconds}s.\n"
    )
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

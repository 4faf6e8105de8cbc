"""Floods against certbound under the chart's defaults, with the longer figures: peak RSS of
the process tree (VmHWM, /proc) while each flood is held, RSS 10 s after it ends, and a good
client at 150 req/s (open loop, keep-alive; bench/loadgen.py) beside it.

    .venv/bin/python -m bench.memory                        # 10000 tcp, 10000 half-open, 3000 mtls
    .venv/bin/python -m bench.memory --budget-mib 0 --max-handshakes 10000   # as before the caps
    .venv/bin/python -m bench.memory --workers 2 --kinds half-open -n 20000

The budget defaults to the chart's proxy.resources.limits.memory (certbound reads it from the
cgroup in a pod; here it is given as listen.memory_budget_mib). Floods come from bench/floods.py.
The per-connection figures in proxy/capacity.py come from the `per connection` column.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

try:
    from bench import harness as h
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]

DEFAULT_COUNTS = {"tcp": 10000, "half-open": 10000, "mtls": 3000}


def chart_limit_mib() -> int:
    values = yaml.safe_load((h.REPO / "helm" / "certbound" / "values.yaml").read_text())
    limit = str(values["proxy"]["resources"]["limits"]["memory"])
    return int(limit.removesuffix("Mi"))


def start(procs: h.Procs, m: h.Material, up_port: int, args: argparse.Namespace, name: str) -> Any:
    port, admin = h.free_port(), h.free_port()
    config = yaml.safe_load(h.certbound_config(m, port, admin, up_port, 10000))
    config["listen"].update(workers=args.workers, memory_budget_mib=args.budget_mib)
    if args.max_handshakes:
        config["listen"]["max_handshakes"] = args.max_handshakes
    config["listen"]["idle_timeout_seconds"] = 30  # the chart's default, not the bench's 120
    path = m.dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = procs.start(
        [h.CERTBOUND, "run", "--config", str(path)], h.SUT_CPU, m.dir / f"{name}.log"
    )
    h.wait_http(f"http://127.0.0.1:{admin}/readyz")
    time.sleep(0.5 * args.workers)
    return proc, port, admin


def metric(admin: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def one(kind: str, n: int, m: h.Material, up_port: int, args: argparse.Namespace) -> dict[str, Any]:
    procs = h.Procs()
    try:
        proc, port, admin = start(procs, m, up_port, args, f"certbound-{kind}")
        base = h.status_kb(proc.pid, "VmRSS") / 1024
        good: list[dict[str, Any]] = []
        load_seconds = args.hold + 20.0
        url = f"https://127.0.0.1:{port}/x"
        thread = threading.Thread(
            target=lambda: good.append(
                h.loadgen(url, m, mode="open", rate=150, concurrency=8, duration=load_seconds)
            ),
            daemon=True,
        )
        thread.start()
        time.sleep(1.0)
        cmd = ["taskset", "-c", h.LOAD_CPU, h.PY, "-m", "bench.floods", kind, "--port", str(port)]
        cmd += ["-n", str(n), "--ca", str(m.ca), "--cert", str(m.alice_cert)]
        cmd += ["--key", str(m.alice_key), "--parallel", "200"]
        started = time.monotonic()
        flood = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=h.REPO
        )
        assert flood.stdin is not None and flood.stdout is not None
        opened = flood.stdout.readline().strip()
        spent = time.monotonic() - started
        time.sleep(args.hold)
        peak = h.status_kb(proc.pid, "VmHWM") / 1024
        held_rss = h.status_kb(proc.pid, "VmRSS") / 1024
        gauge = metric(admin, "certbound_handshakes_in_progress")
        flood.stdin.close()
        held = flood.stdout.readline().strip()
        flood.wait(timeout=60)
        time.sleep(10)
        after = h.status_kb(proc.pid, "VmRSS") / 1024
        refused = {
            k: metric(admin, f'certbound_connections_refused_total{{kind="{k}"}}')
            for k in ("connections", "handshakes")
        }
        thread.join(timeout=load_seconds + 60)
        return {
            "kind": kind,
            "n": n,
            "flood": f"{opened} in {spent:.1f}s; at the end {held}",
            "base_mib": base,
            "peak_mib": peak,
            "held_mib": held_rss,
            "after_mib": after,
            "per_connection_kib": (held_rss - base) * 1024 / n,
            "handshakes_gauge": gauge,
            "refused": refused,
            "good": good[0] if good else {},
        }
    finally:
        procs.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="certbound memory under floods")
    p.add_argument("--kinds", default="tcp,half-open,mtls")
    p.add_argument("-n", type=int, default=0, help="connections per flood (default per kind)")
    p.add_argument("--budget-mib", type=int, default=chart_limit_mib())
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-handshakes", type=int, default=0, help="listen.max_handshakes")
    p.add_argument("--hold", type=float, default=5.0, help="seconds each flood is held")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="certbound-memory-"))
    procs = h.Procs()
    limit = chart_limit_mib()
    try:
        m = h.make_material(tmp, 1)
        _, up_port = h.start_upstream(procs, m, h.LOAD_CPU, "upstream")
        print(
            f"memory: chart limit {limit} MiB, listen.memory_budget_mib {args.budget_mib}, "
            f"max_handshakes {args.max_handshakes or 'default'}, workers {args.workers}; "
            "good client 150 req/s beside each flood",
            flush=True,
        )
        for kind in args.kinds.split(","):
            r = one(kind, args.n or DEFAULT_COUNTS[kind], m, up_port, args)
            g = r["good"]
            print(
                f"{kind:>9} x{r['n']}: RSS base {r['base_mib']:.0f} MiB, peak {r['peak_mib']:.0f} "
                f"MiB ({r['peak_mib'] / limit:.0%} of the limit), held {r['held_mib']:.0f} MiB, "
                f"10 s after {r['after_mib']:.0f} MiB; {r['per_connection_kib']:.1f} KiB per "
                f"connection offered; refused {r['refused']}; handshakes gauge at the end "
                f"{r['handshakes_gauge']:.0f}",
                flush=True,
            )
            print(f"{'':>9}  flood: {r['flood']}", flush=True)
            print(
                f"{'':>9}  good client: statuses {g.get('statuses')}, errors {g.get('errors')}, "
                f"p50 {g.get('p50_ms')} ms, p99 {g.get('p99_ms')} ms",
                flush=True,
            )
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""(d)'s requests per busy core for this checkout beside other commits, in one sitting.

bench/run.py's (d) figure (32 kept-alive mTLS connections, one cached token, certbound pinned
to CPU 0, the load generator and upstream on CPU 1), measured for each code base in turn,
round after round, the order rotating so that no side always runs first. Per busy core is
requests divided by certbound's CPU seconds, so a load generator that cannot saturate the
core does not lower it. Prints every round and, per code base, the median and its ratio to
this checkout's median: a "within 5 %" claim needs the spread of each side beside it.

    git archive 9b51bb4 proxy | tar -x -C /tmp/parent
    .venv/bin/python bench/compare.py /tmp/parent [--rounds 5] [--seconds 8]

Each DIR holds a `proxy/` package; it is imported instead of this checkout's (PYTHONPATH),
with this checkout's virtual environment and bench harness.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    from bench import harness as h
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]

HERE = "this checkout"


def per_busy_core(m: h.Material, upstream_port: int, code: str, seconds: float) -> float:
    procs = h.Procs()
    try:
        env = None if code == HERE else {"PYTHONPATH": code}
        proc, port = h.start_certbound(procs, m, upstream_port, 10000, "compare", env)
        url = f"https://127.0.0.1:{port}/bench/resource"
        h.loadgen(url, m, duration=2)  # warm: imports, caches, the upstream pool
        cpu = h.cpu_seconds(proc.pid)
        run = h.loadgen(url, m, duration=seconds)
        cpu = h.cpu_seconds(proc.pid) - cpu
        bad = sum(n for s, n in run["statuses"].items() if s != "200") + sum(run["errors"].values())
        if bad:
            raise RuntimeError(f"{code}: {bad} requests not answered 200")
        return float(run["requests"]) / cpu
    finally:
        procs.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("codes", nargs="+", help="directories holding another proxy/ package")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each measured run")
    args = p.parse_args(argv)
    codes = [HERE, *(str(Path(c).resolve()) for c in args.codes)]
    for code in codes[1:]:
        if not (Path(code) / "proxy" / "__init__.py").exists():
            print(f"{code}: no proxy/ package there", file=sys.stderr)
            return 2
    procs = h.Procs()
    figures: dict[str, list[float]] = {code: [] for code in codes}
    try:
        m = h.make_material(Path(tempfile.mkdtemp(prefix="certbound-compare-")), 1)
        _, upstream_port = h.start_upstream(procs, m, h.LOAD_CPU, "upstream")
        for round_ in range(args.rounds):
            order = codes[round_ % len(codes) :] + codes[: round_ % len(codes)]
            line = []
            for code in order:
                figures[code].append(per_busy_core(m, upstream_port, code, args.seconds))
                line.append(f"{Path(code).name or code}: {figures[code][-1]:,.0f}")
            print(
                f"round {round_ + 1} ({time.strftime('%H:%M:%S')}): " + ", ".join(line), flush=True
            )
    finally:
        procs.close()
    here = statistics.median(figures[HERE])
    print("\nrequests per busy core (median, min-max of the rounds; ratio of medians)")
    for code in codes:
        runs = figures[code]
        median = statistics.median(runs)
        print(
            f"  {code}: {median:,.0f} ({min(runs):,.0f}-{max(runs):,.0f}); "
            f"this checkout / it: {here / median:.3f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

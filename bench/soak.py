"""Soak: run certbound (full checks) under a moderate open-loop load for N minutes, sample its
RSS every 10 s, print the samples and the slope; exit 1 if RSS grows more than 20% after the
first minute (baseline = the first sample at or after 60 s; for runs shorter than 2 minutes,
the first sample at or after half the run).

    .venv/bin/python bench/soak.py                      # 10 minutes, 300 req/s
    .venv/bin/python bench/soak.py --minutes 1 --interval 5   # smoke test

The token mix is a round-robin over --tokens distinct bound tokens (default 20000, twice the
default cache size), so the verified-token cache fills to its bound during the first minute and
then churns: a leak in the cache, the per-connection identity map or the upstream pool shows as
growth after that. The load generator keeps 32 keep-alive connections and also runs a
new-connection burst every interval, so connection setup/teardown paths are exercised too.
Pinning as in bench/run.py: certbound on CPU 0, load generator + upstream on CPU 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

try:
    from bench import harness as h
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(r for _, r in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    cov = sum((t - mx) * (r - my) for t, r in samples)
    return cov / var * 60 if var else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="certbound RSS soak test")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=300, help="open-loop requests/s")
    p.add_argument("--interval", type=float, default=10, help="RSS sample period, seconds")
    p.add_argument("--tokens", type=int, default=20000, help="distinct tokens, round-robin")
    p.add_argument("--max-growth", type=float, default=0.20)
    args = p.parse_args(argv)
    duration = args.minutes * 60
    baseline_at = 60.0 if duration >= 120 else duration / 2
    tmp = Path(tempfile.mkdtemp(prefix="certbound-soak-"))
    procs = h.Procs()
    samples: list[tuple[float, float]] = []
    results: list[dict[str, Any]] = []
    try:
        m = h.make_material(tmp, args.tokens)
        _, up_port = h.start_upstream(procs, m, h.LOAD_CPU, "upstream")
        proc, port = h.start_certbound(procs, m, up_port, 10000, "certbound")
        url = f"https://127.0.0.1:{port}/soak"

        def load() -> None:
            results.append(
                h.loadgen(url, m, mode="open", rate=args.rate, duration=duration,
                          tokens=m.token_many)
            )  # fmt: skip

        t = threading.Thread(target=load, daemon=True)
        start = time.monotonic()
        t.start()
        print(
            f"soak: certbound pid {proc.pid}, {args.rate:g} req/s for {args.minutes:g} min, "
            f"{args.tokens} distinct tokens; RSS every {args.interval:g}s",
            flush=True,
        )
        while True:
            now = time.monotonic() - start
            if now > duration:
                break
            rss = h.status_kb(proc.pid, "VmRSS") / 1024
            samples.append((now, rss))
            print(f"  t={now:6.1f}s  RSS={rss:7.1f} MB", flush=True)
            # a burst of fresh TLS connections each interval (handshake/teardown paths)
            h.loadgen(url, m, mode="newconn", concurrency=4, duration=0.5)
            time.sleep(max(0.0, args.interval - (time.monotonic() - start - now)))
        t.join(timeout=60)
        if proc.poll() is not None:
            print("FAIL: certbound exited during the soak", flush=True)
            return 1
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)

    load_result = results[0] if results else {}
    print(f"load: {load_result.get('requests')} requests, statuses "
          f"{load_result.get('statuses')}, errors {load_result.get('errors')}, "
          f"p50 {load_result.get('p50_ms')} ms, p99 {load_result.get('p99_ms')} ms")  # fmt: skip
    after = [(t, r) for t, r in samples if t >= baseline_at]
    if not after:
        print("FAIL: no samples after the baseline point (run longer)")
        return 1
    base = after[0][1]
    peak = max(r for _, r in after)
    growth = (peak - base) / base
    print(f"slope (all samples): {slope_mb_per_min(samples):+.3f} MB/min; "
          f"slope after {baseline_at:g}s: {slope_mb_per_min(after):+.3f} MB/min")  # fmt: skip
    print(f"RSS at {after[0][0]:.0f}s: {base:.1f} MB; peak after: {peak:.1f} MB; "
          f"growth {growth * 100:+.1f}% (limit {args.max_growth * 100:.0f}%)")  # fmt: skip
    ok_count = int(load_result.get("statuses", {}).get("200", 0))
    if growth > args.max_growth:
        print("FAIL: RSS grew more than the limit after the first minute")
        return 1
    if ok_count == 0:
        print("FAIL: no request succeeded")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())

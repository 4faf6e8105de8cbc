"""Profile certbound (full checks) under keep-alive saturation with py-spy and print the top
hotspots as text: self time (leaf frames) and inclusive time, as a share of samples.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py [--seconds 20] [--distinct] [--cache-size N]

Same setup as bench/run.py (d): certbound pinned to CPU 0, load generator and upstream on CPU 1;
py-spy samples at 250 Hz in --nonblocking mode (it does not stop the process) from CPU 1.
`--distinct` sends a different token per request (cache misses).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

try:
    from bench import harness as h
except ImportError:  # run as a script: bench/ is sys.path[0]
    import harness as h  # type: ignore[no-redef]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (pkg/file.py)` without the line number."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/", "/tmp/cb-scratch/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarize(raw: Path, top: int) -> str:
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_file_self: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        leaf_file = frames[-1].rsplit("(", 1)[-1].rstrip(")")
        by_file_self[_area(leaf_file)] += n
    out = [f"samples: {total}", "", f"### top {top} by self time (leaf frame)", ""]
    out += ["| # | function (file) | self % |", "|---|---|---|"]
    for i, (f, n) in enumerate(self_t.most_common(top), 1):
        out.append(f"| {i} | `{f}` | {100 * n / total:.1f} |")
    out += ["", f"### top {top} in proxy/ and aiohttp by inclusive time", ""]
    out += ["| # | function (file) | inclusive % |", "|---|---|---|"]
    ours = [
        (f, n)
        for f, n in incl.most_common()
        if ("proxy/" in f or "aiohttp/" in f) and "proxy/cli.py" not in f
    ]
    for i, (f, n) in enumerate(ours[:top], 1):
        out.append(f"| {i} | `{f}` | {100 * n / total:.1f} |")
    out.append(
        "\n(py-spy sometimes cuts a resumed coroutine's stack above the task step, so "
        "inclusive shares are lower bounds; self shares are exact to sampling.)"
    )
    out += ["", "### self time by area", "", "| area | self % |", "|---|---|"]
    for area, n in by_file_self.most_common():
        out.append(f"| {area} | {100 * n / total:.1f} |")
    return "\n".join(out)


def _area(path: str) -> str:
    if path.startswith("proxy/"):
        return "proxy/ (certbound)"
    for name in ("aiohttp", "multidict", "yarl", "jwt", "cryptography", "prometheus_client"):
        if path.startswith(name + "/"):
            return name
    if path.startswith("asyncio/"):
        return "asyncio (incl. sslproto: TLS read/write)"
    return "stdlib/other: " + path.split("/")[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="py-spy profile of certbound under load")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--distinct", action="store_true", help="different token every request")
    p.add_argument("--cache-size", type=int, default=10000)
    p.add_argument("--raw-out", default="", help="also keep py-spy's raw collapsed stacks here")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="certbound-prof-"))
    procs = h.Procs()
    try:
        m = h.make_material(tmp, 12000 if args.distinct else 1)
        _, up_port = h.start_upstream(procs, m, h.LOAD_CPU, "upstream")
        proc, port = h.start_certbound(procs, m, up_port, args.cache_size, "certbound")
        url = f"https://127.0.0.1:{port}/bench/resource"
        h.loadgen(url, m, duration=2)
        result: dict[str, Any] = {}
        tokens = m.token_many if args.distinct else None

        def load() -> None:
            result.update(h.loadgen(url, m, duration=args.seconds + 3, tokens=tokens))

        t = threading.Thread(target=load)
        t.start()
        raw = tmp / "profile.txt"
        subprocess.run(
            ["taskset", "-c", h.LOAD_CPU, spy, "record", "--pid", str(proc.pid), "--format",
             "raw", "--rate", "250", "--nonblocking", "--duration", str(int(args.seconds)),
             "--output", str(raw)],
            check=True, capture_output=True,
        )  # fmt: skip
        t.join()
        if args.raw_out:
            shutil.copy(raw, args.raw_out)
        print(f"# certbound py-spy profile ({'distinct tokens' if args.distinct else 'one token'}"
              f", cache_size {args.cache_size})\n")  # fmt: skip
        print(f"load: {result.get('rps')} req/s, statuses {result.get('statuses')}\n")
        print(summarize(raw, args.top))
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Several worker processes sharing the listening ports (SO_REUSEPORT), supervised.

Each worker is a full `certbound run` process; the supervisor only starts, restarts and
stops them. Metrics add up across workers through prometheus-client's multiprocess mode:
every worker writes to files in PROMETHEUS_MULTIPROC_DIR and `/metrics` (served by whichever
worker the kernel picks) aggregates them all.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

log = logging.getLogger("certbound.workers")

# Not CERTBOUND_*: that prefix is reserved for configuration keys.
WORKER_ENV = "_CERTBOUND_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# dpop.nonce without nonce_secret_file: one key for all workers, so that a nonce one worker
# issued is good on the others (a client's next connection may land on any of them).
NONCE_KEY_ENV = "_CERTBOUND_NONCE_KEY_FILE"


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 quota (a Kubernetes CPU limit), if any."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def worker_count(configured: int) -> int:
    """`configured` if set, else one per CPU this process may use (affinity and cgroup limit),
    so a sidecar limited to one core does not start a worker per node core."""
    if configured > 0:
        return configured
    cpus = len(os.sched_getaffinity(0))
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def prepare_metrics_dir() -> str:
    """The shared metrics directory, emptied: stale files from a previous run would add up."""
    directory = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="certbound-metrics-")
    Path(directory).mkdir(parents=True, exist_ok=True)
    for stale in Path(directory).glob("*.db"):
        stale.unlink()
    return directory


def supervise(config: str, workers: int, grace_seconds: float) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT; restart any that die."""
    descriptor, key_file = tempfile.mkstemp(prefix="certbound-nonce-key-")  # mode 0600
    with os.fdopen(descriptor, "w") as key:
        key.write(secrets.token_hex(32))
    try:
        return _supervise(config, workers, grace_seconds, key_file)
    finally:
        os.unlink(key_file)


def _supervise(config: str, workers: int, grace_seconds: float, key_file: str) -> int:
    metrics_dir = os.environ.get(MULTIPROC_ENV) or prepare_metrics_dir()
    env = dict(os.environ, **{MULTIPROC_ENV: metrics_dir, WORKER_ENV: "1", NONCE_KEY_ENV: key_file})
    command = [
        sys.executable,
        "-m",
        "proxy",
        "run",
        "--config",
        config,
        "--grace-seconds",
        str(grace_seconds),
    ]
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    procs = [subprocess.Popen(command, env=env) for _ in range(workers)]  # noqa: S603
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = [time.monotonic()] * workers
    print(f"certbound: supervising {workers} workers, metrics in {metrics_dir}", file=sys.stderr)
    while True:
        time.sleep(0.2)
        if stopping:
            break
        for index, proc in enumerate(procs):
            code = proc.poll()
            if code is None:
                continue
            _mark_dead(proc.pid)
            if time.monotonic() - started[index] < 5:
                # Crashing at start (a port in use, a broken file): restarting will not help.
                print(f"certbound: worker exited at start with {code}; stopping", file=sys.stderr)
                on_signal(signal.SIGTERM, None)
                break
            print(f"certbound: worker {proc.pid} exited with {code}; restarting", file=sys.stderr)
            procs[index] = subprocess.Popen(command, env=env)  # noqa: S603
            started[index] = time.monotonic()
    deadline = time.monotonic() + grace_seconds + 5
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return 0 if all(code == 0 for code in codes) else 1


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except OSError:
        pass

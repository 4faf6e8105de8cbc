"""Several worker processes sharing the listening ports (SO_REUSEPORT), supervised.

Each worker is a full `certbound run` process; the supervisor only starts, restarts, reloads
and stops them. A worker that dies is restarted after a delay that doubles with each death
that follows a short life, and the supervisor never gives up while it can start a process: a
crash loop (an OOM kill, a bad deployment) costs capacity, not the pod's whole traffic, and
the restarts are counted. Metrics add up across workers through prometheus-client's
multiprocess mode: every process writes to files in PROMETHEUS_MULTIPROC_DIR and `/metrics`
(served by whichever worker the kernel picks) aggregates them all.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from proxy.settings import Settings

log = logging.getLogger("certbound.workers")

# Not CERTBOUND_*: that prefix is reserved for configuration keys.
WORKER_ENV = "_CERTBOUND_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The write end of a pipe on which a worker says it serves (its listeners are bound).
READY_FD_ENV = "_CERTBOUND_READY_FD"
# dpop.nonce without nonce_secret_file: one key for all workers, so that a nonce one worker
# issued is good on the others (a client's next connection may land on any of them).
NONCE_KEY_ENV = "_CERTBOUND_NONCE_KEY_FILE"

FIRST_RESTART_DELAY = 0.5  # seconds
MAX_RESTART_DELAY = 30.0
# A worker that served this long before dying starts its slot's backoff afresh.
STABLE_SECONDS = 30.0
POLL_SECONDS = 0.1


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


def restart_delay(short_lives: int) -> float:
    """Seconds before restarting a worker whose slot has seen `short_lives` deaths in a row
    of workers that served less than STABLE_SECONDS: 0 for the first, then 0.5, 1, 2 ... 30."""
    if short_lives <= 1:
        return 0.0 if short_lives <= 0 else FIRST_RESTART_DELAY
    return min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2.0 ** (short_lives - 1))


def prepare_metrics_dir() -> str:
    """The shared metrics directory, emptied: stale files from a previous run would add up."""
    directory = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="certbound-metrics-")
    Path(directory).mkdir(parents=True, exist_ok=True)
    for stale in Path(directory).glob("*.db"):
        stale.unlink()
    return directory


def notify_ready() -> None:
    """In a worker: tell the supervisor that this process serves (no-op outside one)."""
    fd = os.environ.pop(READY_FD_ENV, "")
    if fd.isdigit():
        try:
            os.write(int(fd), b"r")
            os.close(int(fd))
        except OSError:
            pass  # the supervisor is gone; SIGTERM or the kernel will follow


@dataclass
class _Slot:
    """One worker position: the process in it now, and its restart history."""

    proc: subprocess.Popen[bytes] | None = None
    ready: int | None = None  # read end of the worker's ready pipe
    serving_since: float | None = None
    short_lives: int = 0
    restart_at: float = 0.0


def supervise(config: str, settings: Settings, workers: int, grace_seconds: float) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT; restart any that die; SIGHUP
    reloads the configuration (checked here first) in every worker."""
    from proxy import audit

    listener = audit.setup_logging(settings.log.level)
    private = tempfile.mkdtemp(prefix="certbound-supervisor-")  # mode 0700
    try:
        key_file = os.path.join(private, "nonce-key")
        with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as key:
            key.write(secrets.token_hex(32))
        # Workers read this copy, never the file itself: a worker restarted after an edit that
        # was not (or could not be) reloaded starts with what its siblings run.
        running_config = os.path.join(private, "config.yaml")
        shutil.copyfile(config, running_config)
        os.chmod(running_config, 0o600)  # it may hold a client secret
        return Supervisor(config, running_config, settings, workers, grace_seconds, key_file).run()
    finally:
        shutil.rmtree(private, ignore_errors=True)
        listener.stop()


class Supervisor:
    def __init__(
        self,
        config: str,
        running_config: str,
        settings: Settings,
        workers: int,
        grace_seconds: float,
        key_file: str,
    ) -> None:
        self.config = config
        self.running_config = running_config
        self.settings = settings
        self.grace_seconds = grace_seconds
        metrics_dir = os.environ.get(MULTIPROC_ENV) or prepare_metrics_dir()
        self.env = dict(
            os.environ, **{MULTIPROC_ENV: metrics_dir, WORKER_ENV: "1", NONCE_KEY_ENV: key_file}
        )
        self.command = [
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--config",
            running_config,
            "--grace-seconds",
            str(grace_seconds),
        ]
        self.slots = [_Slot() for _ in range(workers)]
        self.stopping = False
        self.reload_asked = False
        log.info("supervising %d workers, metrics in %s", workers, metrics_dir)

    # -- signals -------------------------------------------------------------------------

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload_asked = True  # the check reads files: done in the loop, not here

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        from proxy import metrics

        self.restarts = metrics.WORKER_RESTARTS
        self.serving = metrics.WORKERS_SERVING
        for slot in self.slots:
            self._start(slot)
        while not self.stopping:
            try:
                self._round()
            except Exception:  # the supervisor's one promise: it does not exit on its own
                log.exception("supervisor: unexpected error; carrying on")
                time.sleep(POLL_SECONDS)
        return self._stop_all()

    def _round(self) -> None:
        self._wait_for_news()
        if self.reload_asked:
            self.reload_asked = False
            self._reload()
        now = time.monotonic()
        for slot in self.slots:
            self._tend(slot, now)
        self.serving.set(sum(1 for s in self.slots if s.serving_since is not None))

    # -- workers -------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        read_end, write_end = os.pipe()
        env = dict(self.env, **{READY_FD_ENV: str(write_end)})
        try:
            slot.proc = subprocess.Popen(self.command, env=env, pass_fds=(write_end,))  # noqa: S603
        except OSError as exc:
            os.close(read_end)
            slot.proc = None
            slot.short_lives += 1
            slot.restart_at = time.monotonic() + max(
                FIRST_RESTART_DELAY, restart_delay(slot.short_lives)
            )
            log.error("cannot start a worker: %s; trying again", exc)
        else:
            slot.ready = read_end
        finally:
            os.close(write_end)
        slot.serving_since = None

    def _wait_for_news(self) -> None:
        """Sleep up to POLL_SECONDS, waking when a worker says it serves."""
        pipes = [s.ready for s in self.slots if s.ready is not None]
        try:
            readable, _, _ = select.select(pipes, [], [], POLL_SECONDS)
        except InterruptedError:
            return
        for slot in self.slots:
            if slot.ready is not None and slot.ready in readable:
                if os.read(slot.ready, 1):
                    slot.serving_since = time.monotonic()
                os.close(slot.ready)
                slot.ready = None

    def _tend(self, slot: _Slot, now: float) -> None:
        proc = slot.proc
        if proc is None:
            if now >= slot.restart_at:
                self.restarts.inc()
                self._start(slot)
            return
        code = proc.poll()
        if code is None:
            return
        _mark_dead(proc.pid)
        if slot.ready is not None:
            os.close(slot.ready)
            slot.ready = None
        served = 0.0 if slot.serving_since is None else now - slot.serving_since
        slot.short_lives = 0 if served >= STABLE_SECONDS else slot.short_lives + 1
        delay = restart_delay(slot.short_lives)
        slot.proc, slot.serving_since, slot.restart_at = None, None, now + delay
        log.error(
            "worker %d exited with %d after serving %.1fs; restarting in %.1fs",
            proc.pid,
            code,
            served,
            delay,
        )

    def _reload(self) -> None:
        """SIGHUP: check the file here; a good one is copied for the workers and each is
        told to reload; a bad one changes nothing, and every problem is logged."""
        from proxy import metrics
        from proxy.config import ConfigError
        from proxy.config.check import check_file, restart_keys_changed

        try:
            new = check_file(self.config)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            metrics.CONFIG_RELOADS.labels(result="failure").inc()
            return
        except Exception:  # the supervisor outlives any file
            log.exception("reload refused: the check of %s failed", self.config)
            metrics.CONFIG_RELOADS.labels(result="failure").inc()
            return
        refused = restart_keys_changed(self.settings, new)
        if refused:
            for key in refused:
                log.error("reload refused: %s: changes only with a restart", key)
            metrics.CONFIG_RELOADS.labels(result="failure").inc()
            return
        shutil.copyfile(self.config, self.running_config)
        self.settings = new
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        log.info("configuration checked: %d workers reload it", len(live))
        for proc in live:
            proc.send_signal(signal.SIGHUP)

    def _stop_all(self) -> int:
        procs = [s.proc for s in self.slots if s.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds + 5
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

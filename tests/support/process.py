"""Run `certbound run` as a real process for tests that need one (workers, signals, logs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as resp:
            return str(resp.read().decode())


@contextlib.contextmanager
def proxy_process(
    tmp_path: Path,
    config: dict[str, Any],
    *,
    ready_timeout: float = 20.0,
    env: dict[str, str] | None = None,
) -> Iterator[ProxyProcess]:
    """A ready `certbound run`. A port another suite on this machine took between
    free_port() and the bind means new ports and a new start, at most twice."""
    for attempt in range(3):
        running = _start(tmp_path, config, env)
        try:
            _wait_ready(running, ready_timeout)
        except _PortTaken:
            stop_group(running.proc)
            if attempt == 2:
                raise AssertionError(f"no free port:\n{running.output()}") from None
            continue
        except BaseException:
            stop_group(running.proc)
            raise
        try:
            yield running
        finally:
            stop_group(running.proc)
        return


class _PortTaken(Exception):
    pass


def _start(tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None) -> ProxyProcess:
    port, admin = free_port(), free_port()
    config = {
        **config,
        "listen": {"host": "127.0.0.1", "port": port, **config.get("listen", {})},
        "admin": {"host": "127.0.0.1", "port": admin},
    }
    path = tmp_path / f"certbound-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / f"certbound-{port}.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CERTBOUND_", "PROMETHEUS_"))}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(path), "--grace-seconds", "5"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**clean, **(env or {})},
            start_new_session=True,
        )
    return ProxyProcess(proc, port, admin, log_path)


def _wait_ready(running: ProxyProcess, ready_timeout: float) -> None:
    deadline = time.monotonic() + ready_timeout
    while True:
        if running.proc.poll() is not None:
            if "address already in use" in running.output():
                raise _PortTaken
            raise AssertionError(
                f"certbound exited with {running.proc.returncode}:\n{running.output()}"
            )
        try:
            with urllib.request.urlopen(running.admin + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"certbound not ready:\n{running.output()}")
        time.sleep(0.1)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group a test started (start_new_session), SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def metric(proc: ProxyProcess, sample: str) -> float:
    """One series' value in the process's scrape, 0 when it has not been counted yet."""
    for line in proc.metrics().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def peak_rss(pid: int) -> int:
    """VmHWM (the peak resident set) of the process and its descendants: never lower than
    the peak of their sum, so a bound on it is a bound on what the container held."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return total


def sample(text: str, name: str) -> float:
    """One series' value in a scrape; a series the scrape lacks fails the test, so a
    misspelt name cannot read as 0."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the scrape")


def workers_of(proc: ProxyProcess) -> set[int]:
    """The supervisor's live children (a killed one stays a zombie until it is reaped)."""
    pid = proc.proc.pid
    live = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            live.add(int(child))
    return live


async def serving_workers(proc: ProxyProcess, count: int, timeout: float) -> set[int]:
    """The worker pids, once `count` of them have bound their listeners."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = await asyncio.to_thread(proc.metrics)
        except OSError as exc:  # no worker serves the admin port right now
            text = repr(exc)
        if f"certbound_workers_serving {float(count)}" in text:
            return workers_of(proc)
        assert time.monotonic() < deadline, text[-3000:] + proc.output()[-3000:]
        await asyncio.sleep(0.1)

"""Run `certbound run` as a real process for tests that need one (workers, signals, logs)."""

from __future__ import annotations

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
    env = {**clean, **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(path), "--grace-seconds", "5"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = ProxyProcess(proc, port, admin, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"certbound exited with {proc.returncode}:\n{running.output()}"
                )
            try:
                with urllib.request.urlopen(running.admin + "/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"certbound not ready:\n{running.output()}")
            time.sleep(0.1)
        yield running
    finally:
        stop_group(proc)


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

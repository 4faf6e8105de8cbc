"""A real redis-server (Debian's package, installed by scripts/test.sh) on a loopback port,
started and stopped by the tests that need a shared DPoP replay cache."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.process import free_port

PASSWORD = "redis-test-password-7f3a"


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: run the test command, bash scripts/test.sh"
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            assert self.proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def command(self, *args: str) -> str:
        """One command through redis-cli, so the tests' view of Redis does not go through the
        client library the proxy uses."""
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed: run the test command, bash scripts/test.sh"
        done = subprocess.run(
            [cli, "-p", str(self.port), "--no-auth-warning", "-a", PASSWORD, *args],
            capture_output=True,
            timeout=5,
            check=False,
        )
        return done.stdout.decode().strip()

    def _answers(self) -> bool:
        return self.command("PING") == "PONG"

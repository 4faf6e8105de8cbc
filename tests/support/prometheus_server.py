"""A real Prometheus (Debian's `prometheus` package) for the tests: scrapes the targets it is
given every second, evaluates a rules file every second, and answers the HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.support.process import free_port, stop_group

INSTALL_HINT = "prometheus is not installed: run the test command, bash scripts/test.sh"
T = TypeVar("T")


def with_short_for(rules: dict[str, Any], duration: str) -> dict[str, Any]:
    """The same rules, with every `for:` cut to `duration`: seconds, not the hours an
    operator waits, and nothing else changed."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    return rules


@dataclass
class Prometheus:
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, targets: list[dict[str, Any]], rules: dict[str, Any]) -> None:
        binary = shutil.which("prometheus")
        assert binary, INSTALL_HINT
        (self.directory / "targets.json").write_text(json.dumps(targets))
        (self.directory / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(self.directory / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": "certbound",
                    "file_sd_configs": [{"files": [str(self.directory / "targets.json")]}],
                }
            ],
        }
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        for _ in range(3):  # a port another suite took meanwhile: a new one
            self.port = free_port()
            log = (self.directory / "prometheus.log").open("ab")
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if self.wait_for(self._ready_or_exited, "Prometheus ready", 30) == "ready":
                return
            if "address already in use" not in self.log():
                break
        raise AssertionError(f"Prometheus did not start:\n{self.log()}")

    def _ready_or_exited(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return "exited"
        return "ready" if self._get("/-/ready") is not None else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return bytes(resp.read())
        except OSError:
            return None

    def api(self, path: str, **params: str) -> Any:
        body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert body is not None, f"Prometheus did not answer {path}:\n{self.log()}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant vector result: {the `pod` label (or the labels as text): value}."""
        out = {}
        for item in self.api("query", query=expr)["result"]:
            labels = item["metric"]
            out[labels.get("pod", json.dumps(labels, sort_keys=True))] = float(item["value"][1])
        return out

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def firing(self) -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"].get("pod", ""))
            for a in self.alerts()
            if a["state"] == "firing"
        }

    def wait_for(self, check: Callable[[], T], what: str, timeout: float = 60) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.5)

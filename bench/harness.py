"""Shared plumbing for bench/run.py, bench/soak.py and bench/profile.py: throwaway PKI and
tokens, pinned subprocesses in their own process groups, /proc readings, the load generator.

Pinning on a 2-core box: the system under test gets CPU 0 alone; the load generator and the
tiny upstream share CPU 1 (taskset -c). Every child is started with start_new_session so its
whole process group can be killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from proxy.tools.demo import Issuer, make_pki
from proxy.trust.identity import compute_thumbprint

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = sys.executable
CERTBOUND = str(Path(PY).with_name("certbound"))
SUT_CPU = "0"
LOAD_CPU = "1"
ISSUER = "https://issuer.bench.local"
AUDIENCE = "https://bench.certbound.local"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Material:
    """PKI files, a JWKS file and token files for one bench run, all in a temp dir."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    alice_cert: Path
    alice_key: Path
    bob_cert: Path
    bob_key: Path
    jwks: Path
    token_one: Path  # one token bound to alice
    token_many: Path  # many distinct tokens bound to alice


def make_material(directory: Path, distinct_tokens: int) -> Material:
    pki = make_pki(directory)
    issuer = Issuer(key=ec.generate_private_key(ec.SECP256R1()), kid="bench-1", url=ISSUER)
    (directory / "jwks.json").write_text(json.dumps(issuer.jwks()))
    thumb = compute_thumbprint(pki.alice.cert_der)
    one = issuer.mint(thumb, subject="alice", audience=AUDIENCE, ttl=7200)
    (directory / "token_one.txt").write_text(one + "\n")
    many = [
        issuer.mint(thumb, subject=f"alice-{i}", audience=AUDIENCE, ttl=7200)
        for i in range(distinct_tokens)
    ]
    (directory / "token_many.txt").write_text("\n".join(many) + "\n")
    d = directory
    return Material(
        d, d / "ca.pem", d / "server.pem", d / "server.key", d / "alice.pem", d / "alice.key",
        d / "bob.pem", d / "bob.key", d / "jwks.json", d / "token_one.txt", d / "token_many.txt",
    )  # fmt: skip


class Procs:
    """Children started pinned, each in its own session; `close` kills every group."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self, cmd: list[str], cpu: str, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(
            ["taskset", "-c", cpu, *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(REPO),
            env={**os.environ, **(env or {})},
        )
        out.close()
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # stragglers in the group (nginx workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.children:
            self.children.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.children)):
            self.stop(proc)


def tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(k) for k in kids)
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """Sum of a /proc/<pid>/status field (VmHWM, VmRSS) over the process tree, in kB."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def certbound_config(
    m: Material, port: int, admin_port: int, upstream_port: int, cache_size: int
) -> str:
    return f"""\
# idle_timeout 120 s: the idle row holds 1,000 connections through two runs of load.
listen: {{host: "127.0.0.1", port: {port}, idle_timeout_seconds: 120}}
tls:
  cert_file: "{m.server_cert}"
  key_file: "{m.server_key}"
  client_ca_file: "{m.ca}"
upstream: {{url: "http://127.0.0.1:{upstream_port}"}}
tokens:
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
  jwks_file: "{m.jwks}"
  algorithms: ["ES256"]
  cache_size: {cache_size}
admin: {{host: "127.0.0.1", port: {admin_port}}}
log: {{level: "warning"}}
"""


def start_certbound(
    procs: Procs,
    m: Material,
    upstream_port: int,
    cache_size: int,
    name: str,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """A ready `certbound run` pinned to the SUT's CPU; `env` adds to its environment (a
    PYTHONPATH to run another checkout's proxy/)."""
    port, admin = free_port(), free_port()
    cfg = m.dir / f"{name}.yaml"
    cfg.write_text(certbound_config(m, port, admin, upstream_port, cache_size))
    command = [CERTBOUND, "run", "--config", str(cfg)]
    proc = procs.start(command, SUT_CPU, m.dir / f"{name}.log", env)
    wait_http(f"http://127.0.0.1:{admin}/readyz")
    return proc, port


def start_forwarder_only(
    procs: Procs, m: Material, upstream_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    port, admin = free_port(), free_port()
    cfg = m.dir / "forwarder-only.yaml"
    cfg.write_text(certbound_config(m, port, admin, upstream_port, 10000))
    cmd = [PY, str(BENCH / "forwarder_only.py"), "--config", str(cfg)]
    proc = procs.start(cmd, SUT_CPU, m.dir / "forwarder-only.log")
    wait_port(port)
    return proc, port


def hold_idle(url: str, m: Material, n: int) -> subprocess.Popen[str]:
    """bench/idle.py on the load core: n kept-alive connections, held until stdin closes."""
    cmd = ["taskset", "-c", LOAD_CPU, PY, str(BENCH / "idle.py"), "--url", url, "-n", str(n)]
    cmd += ["--ca", str(m.ca), "--cert", str(m.alice_cert), "--key", str(m.alice_key)]
    cmd += ["--token-file", str(m.token_one)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def start_upstream(procs: Procs, m: Material, cpu: str, name: str) -> tuple[Any, int]:
    port = free_port()
    proc = procs.start(
        [PY, str(BENCH / "upstream.py"), "--port", str(port)], cpu, m.dir / f"{name}.log"
    )
    wait_port(port)
    return proc, port


def loadgen(
    url: str,
    m: Material,
    *,
    mode: str = "closed",
    concurrency: int = 32,
    duration: float = 5.0,
    rate: float = 200.0,
    who: str = "alice",
    tokens: Path | None = None,
    proofs: Path | None = None,
) -> dict[str, Any]:
    cmd = ["taskset", "-c", LOAD_CPU, PY, str(BENCH / "loadgen.py"), "--url", url]
    cmd += ["--mode", mode, "-c", str(concurrency), "-d", str(duration), "--rate", str(rate)]
    if url.startswith("https"):
        cmd += ["--ca", str(m.ca)]
        if who:  # "": no client certificate (a DPoP client)
            cert, key = (m.alice_cert, m.alice_key) if who == "alice" else (m.bob_cert, m.bob_key)
            cmd += ["--cert", str(cert), "--key", str(key)]
    cmd += ["--token-file", str(tokens or m.token_one)]
    if proofs is not None:
        cmd += ["--dpop-file", str(proofs)]
    done = subprocess.run(cmd, capture_output=True, check=False, timeout=duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.decode()[-2000:]}")
    return dict(json.loads(done.stdout))


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  keepalive_requests 10000000;
  upstream app {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {ca};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def start_nginx(procs: Procs, m: Material, upstream_port: int) -> tuple[Any, int]:
    port = free_port()
    conf = m.dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=m.dir,
            port=port,
            upstream_port=upstream_port,
            cert=m.server_cert,
            key=m.server_key,
            ca=m.ca,
        )
    )
    nginx = "/usr/sbin/nginx"
    proc = procs.start(
        [nginx, "-c", str(conf), "-p", str(m.dir), "-e", str(m.dir / "nginx-error.log")],
        SUT_CPU,
        m.dir / "nginx.log",
    )
    wait_port(port)
    return proc, port


def start_naive(procs: Procs, m: Material, upstream_port: int) -> tuple[Any, int]:
    port = free_port()
    cmd = [PY, str(BENCH / "naive_forwarder.py"), "--port", str(port)]
    cmd += ["--upstream", f"http://127.0.0.1:{upstream_port}"]
    cmd += ["--cert", str(m.server_cert), "--key", str(m.server_key), "--ca", str(m.ca)]
    proc = procs.start(cmd, SUT_CPU, m.dir / "naive.log")
    wait_port(port)
    return proc, port

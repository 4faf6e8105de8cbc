"""The chart's alert rules in a real Prometheus, scraping real certbound processes (two workers
each) labelled as a ServiceMonitor labels them: each alert fires under its fault, none on
healthy pods of each supported configuration, a CA taken out on reload leaves the scrape, and
increase() sees a first burst.

One Prometheus and one set of pods for the module (scrape and evaluation every second, the
rules' `for:` cut to 2 s), so the whole module takes seconds, not the hours the rules wait.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.tools.pki import Issued, issue, make_ca
from tests.support.dashboard import dashboard_exprs
from tests.support.dpop_proofs import make_proof, public_jwk
from tests.support.dpop_proofs import thumbprint as jwk_thumbprint
from tests.support.openssl_ca import OpenSSLCA
from tests.support.process import free_port, stop_group
from tests.support.prometheus_server import Prometheus, with_short_for
from tests.support.stack import AUDIENCE, PKI, Issuer, thumbprint

# The first test also waits for the module's fleet (eleven pods of three processes) to start: on a
# busy two-core machine that alone can take a minute.
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
ALERTS_FILE = ROOT / "helm" / "certbound" / "files" / "certbound-alerts.yaml"
NAMESPACE = "ci"
HEALTHY = ("healthy-single", "healthy-issuers", "healthy-introspection", "healthy-dpop")
HEALTHY += ("healthy-forwarded",)

# What each faulty pod is made to suffer, and the alerts that must fire on it for that.
EXPECTED_FIRING: dict[str, set[str]] = {
    "faulty-binding": {
        "CertboundThumbprintMismatchHigh",  # 60 mismatches in one burst
        "CertboundTokenReplayedByManyCertificates",  # one token, two foreign certificates
        "CertboundUpstreamErrorRatioHigh",  # nothing listens on upstream.url
        "CertboundServingCertExpiringSoon",  # serving certificate with 5 days left
        "CertboundClientCaExpiringSoon",  # a second client CA with 10 days left
        "CertboundClientCertsLateInLifetime",  # a client certificate at 0.95 of its life
        "CertboundCrlStaleSoon",  # tls.crl_files: nextUpdate in 1 hour
    },
    "faulty-report-only": {"CertboundReportOnlyEnabled", "CertboundReportOnlyBindingFailures"},
    "faulty-dependencies": {
        "CertboundNoSigningKeys",  # tokens.jwks_uri: nothing listens
        "CertboundJwksRefreshFailing",
        "CertboundCrlFetchFailing",  # tls.fetch_crls from a distribution point that is down
        "CertboundConnectionsRefused",  # listen.max_connections: 1, idle connections
    },
    "faulty-introspection": {
        "CertboundIntrospectionFailing",  # the introspection endpoint is down
        "CertboundOcspResponderFailing",  # the leaf's OCSP responder is down
    },
    "faulty-dpop": {"CertboundDpopReplayCacheFailing"},  # dpop.replay_cache: Redis is down
    "faulty-process": {
        "CertboundWorkerRestarting",  # kill -9 of one of its two workers
        "CertboundConfigReloadFailed",  # SIGHUP after a bad file was written over its config
        "CertboundHandshakesPilingUp",  # HALF_OPEN TCP connections that never send a byte
    },
}
MISMATCHES = 60
REPLAYS = 12
UPSTREAM_ERRORS = 20
# Over the alert's 20 with either worker's share alone, under faulty-process's
# listen.max_handshakes (cut oldest first, so every one stays counted while held).
HALF_OPEN = 48


# ------------------------------------------------------------------------- small real servers


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Workload(_Quiet):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ACTIVE: dict[str, dict[str, Any]] = {}  # opaque token -> its introspection answer


class _Introspection(_Quiet):
    def do_POST(self) -> None:
        form = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        token = dict(p.split("=", 1) for p in form.split("&")).get("token", "")
        body = json.dumps(ACTIVE.get(token, {"active": False})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def closed_url(path: str = "/") -> str:
    """A URL on a loopback port nothing listens on: a dependency that is down."""
    return f"http://127.0.0.1:{free_port()}{path}"


# --------------------------------------------------------------------------------- the pods


@dataclass
class Pod:
    name: str
    config: dict[str, Any]
    directory: Path
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def config_path(self) -> Path:
        return self.directory / f"{self.name}.yaml"

    def workers(self) -> list[int]:
        """The supervisor's children: its worker processes."""
        assert self.proc is not None
        pid = self.proc.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        config = {
            **self.config,
            "listen": {"host": "127.0.0.1", "port": self.port, "workers": 2}
            | self.config.get("listen", {}),
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
        }
        path = self.config_path
        path.write_text(yaml.safe_dump(config))
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CERTBOUND_", "PROMETHEUS_"))
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "run",
                    "--config",
                    str(path),
                    "--grace-seconds",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def wait_serving(self, deadline: float) -> None:
        """Both workers listening (not /readyz: a pod without keys is never ready). A port
        taken between free_port() and the bind (other suites run on this machine too) means
        new ports and a new start, at most twice."""
        assert self.proc is not None
        starts = 1
        while self.output().count('"listening: mTLS') < 2:
            if self.proc.poll() is not None:
                if "address already in use" not in self.output() or starts == 3:
                    raise AssertionError(f"{self.name} exited:\n{self.output()}")
                self.port, self.admin_port = free_port(), free_port()
                self.start()
                starts += 1
            assert time.monotonic() < deadline, f"{self.name} not serving:\n{self.output()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def request(
        self,
        pki: PKI,
        cert: tuple[str, str] | None,
        token: str | None,
        *,
        scheme: str = "Bearer",
        headers: dict[str, str] | None = None,
    ) -> int:
        """One request on a new connection (a new handshake each time)."""
        context = ssl.create_default_context(cafile=pki.ca_file)
        if cert is not None:
            context.load_cert_chain(*cert)
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=10
        )
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"{scheme} {token}"
        try:
            connection.request("GET", "/orders", headers=sent)
            return connection.getresponse().status
        except (OSError, http.client.HTTPException):
            return 0  # refused after the handshake (revocation, caps): counted by certbound
        finally:
            connection.close()


@dataclass
class Fleet:
    pki: PKI
    pods: dict[str, Pod]
    prometheus: Prometheus
    files: dict[str, Path]
    issuer: Issuer
    certs: dict[str, tuple[str, str]]
    late: Issued  # a client certificate at 0.95 of its lifetime
    held: list[socket.socket] = field(default_factory=list)  # half-open, closed at teardown


def _crl(ca: Issued, next_update: dt.datetime) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(next_update)
    )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(Encoding.PEM)


def _jwks_file(directory: Path, issuer: Issuer, name: str) -> str:
    path = directory / f"{name}-jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    return str(path)


@pytest.fixture(scope="module")
def fleet(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    d = tmp_path_factory.mktemp("prometheus-fleet")
    now = dt.datetime.now(dt.UTC)
    issuer, partners = Issuer(url="https://corp.example"), Issuer(url="https://partners.example")
    issuer.add_key("k1")
    partners.add_key("p1")
    server_cert, server_key = pki.files("server")
    certs = {name: pki.files(name) for name in ("alice", "bob")}
    # Late in its life: 9.5 of its 10 days used.
    late = issue(
        pki.ca,
        "late",
        not_before=now - dt.timedelta(days=9.5),
        not_after=now + dt.timedelta(hours=12),
    )
    late_cert, late_key = late.write(d, "late")
    certs["late"] = (str(late_cert), str(late_key))
    short_server = issue(
        pki.ca, "localhost", server=True, client=False, dns_names=("localhost",),
        ip_addresses=("127.0.0.1",), not_after=now + dt.timedelta(days=5),
    )  # fmt: skip
    short_cert, short_key = short_server.write(d, "short-server")
    extra_ca = make_ca("client CA on its way out", not_after=now + dt.timedelta(days=10))
    bundle = d / "client-cas.pem"
    bundle.write_bytes(pki.ca.cert_pem + extra_ca.cert_pem)
    crl = d / "ca.crl"
    crl.write_bytes(_crl(pki.ca, now + dt.timedelta(hours=1)))
    # A CA whose CRL distribution point is down, and one whose leaves name an OCSP responder
    # that is down.
    fetched = OpenSSLCA(
        d / "cdp-ca", "CA with a CRL point that is down", crl_url=closed_url("/ca.crl")
    )
    ocsp_ca = OpenSSLCA(
        d / "ocsp-ca", "CA with an OCSP responder that is down", ocsp_url=closed_url()
    )
    ocsp_leaf = ocsp_ca.issue("ocsp-client")
    certs["ocsp"] = (str(ocsp_leaf.cert), str(ocsp_leaf.key))
    fetch_bundle = d / "fetch-cas.pem"
    fetch_bundle.write_bytes(pki.ca.cert_pem + fetched.cert.read_bytes())
    ocsp_bundle = d / "ocsp-cas.pem"
    ocsp_bundle.write_bytes(pki.ca.cert_pem + ocsp_ca.cert.read_bytes())
    secret = d / "introspection-secret"
    secret.write_text("s3cret\n")

    with contextlib.ExitStack() as stack:
        workload = stack.enter_context(http_server(_Workload))
        introspection = stack.enter_context(http_server(_Introspection))
        tls = {"cert_file": server_cert, "key_file": server_key, "client_ca_file": pki.ca_file}
        single = {
            "issuer": issuer.url,
            "audience": AUDIENCE,
            "jwks_file": _jwks_file(d, issuer, "corp"),
        }

        def introspected(endpoint: str) -> dict[str, Any]:
            return {
                "issuer": issuer.url,
                "audience": AUDIENCE,
                "accept_jwt": False,
                "introspection": {
                    "enabled": True,
                    "endpoint": endpoint,
                    "client_id": "certbound-rs",
                    "client_secret_file": str(secret),
                },
            }

        configs: dict[str, dict[str, Any]] = {
            "healthy-single": {"tls": tls, "upstream": {"url": workload}, "tokens": single},
            "healthy-issuers": {
                "tls": tls,
                "upstream": {"url": workload},
                "tokens": {
                    "issuers": [
                        {"name": "corp", **single},
                        {
                            "name": "partners",
                            "issuer": partners.url,
                            "audience": AUDIENCE,
                            "jwks_file": _jwks_file(d, partners, "partners"),
                        },
                    ]
                },
            },
            "healthy-introspection": {
                "tls": tls,
                "upstream": {"url": workload},
                "tokens": introspected(introspection + "/introspect"),
            },
            "healthy-dpop": {"tls": tls, "upstream": {"url": workload}, "tokens": single},
            "healthy-forwarded": {
                "tls": tls,
                "upstream": {"url": workload},
                "tokens": single,
                "client_cert": {"source": "header", "trusted_proxies": ["127.0.0.1/32"]},
            },
            "faulty-binding": {
                "tls": {
                    "cert_file": str(short_cert),
                    "key_file": str(short_key),
                    "client_ca_file": str(bundle),
                    "crl_files": [str(crl)],
                },
                "upstream": {"url": closed_url()},
                "tokens": single,
            },
            "faulty-report-only": {
                "tls": tls,
                "upstream": {"url": workload},
                "tokens": single,
                "binding": {"mode": "report_only"},
            },
            "faulty-dependencies": {
                "tls": tls
                | {
                    "client_ca_file": str(fetch_bundle),
                    "fetch_crls": True,
                    "crl_fetch_interval_seconds": 60,
                },
                "upstream": {"url": workload},
                "tokens": {
                    "issuer": issuer.url,
                    "audience": AUDIENCE,
                    "jwks_uri": closed_url("/jwks.json"),
                },
                "listen": {"max_connections": 1},
            },
            "faulty-introspection": {
                "tls": tls
                | {
                    "client_ca_file": str(ocsp_bundle),
                    "ocsp": "leaf",
                    "revocation_unavailable": "allow",
                },
                "upstream": {"url": workload},
                "tokens": introspected(closed_url("/introspect")),
            },
            "faulty-dpop": {
                "tls": tls,
                "upstream": {"url": workload},
                "tokens": single,
                "dpop": {"replay_cache": f"redis://127.0.0.1:{free_port()}/0"},
            },
            "faulty-process": {
                "tls": tls,
                "upstream": {"url": workload},
                "tokens": single,
                # Held handshakes outlive the module's wait for the alert (for: 2s here).
                "listen": {"max_handshakes": HALF_OPEN, "handshake_timeout_seconds": 60},
            },
        }
        pods = {name: Pod(name, config, d) for name, config in configs.items()}
        for pod in pods.values():
            stack.callback(pod.stop)
            pod.start()
        deadline = time.monotonic() + 120
        for pod in pods.values():
            pod.wait_serving(deadline)
        prometheus = Prometheus(d / "prometheus")
        prometheus.directory.mkdir()
        targets = [
            {
                "targets": [f"127.0.0.1:{pod.admin_port}"],
                "labels": {"namespace": NAMESPACE, "pod": name},
            }
            for name, pod in pods.items()
        ]
        stack.callback(prometheus.stop)
        prometheus.start(targets, with_short_for(yaml.safe_load(ALERTS_FILE.read_text()), "2s"))
        # Every series scraped at least once before the first event, as on a pod that has been
        # up for a while: then the burst below is the first step increase() must see.
        prometheus.wait_for(
            lambda: (
                len(prometheus.query("count by (pod) (certbound_build_info)")) == len(pods)
                and min(prometheus.query("count_over_time(certbound_build_info[1m])").values()) >= 2
            ),
            "a scrape of every pod",
        )
        fleet = Fleet(pki, pods, prometheus, {"bundle": bundle}, issuer, certs, late)
        stack.callback(lambda: [sock.close() for sock in fleet.held])
        _make_trouble(fleet)
        _trouble_the_process(fleet)
        yield fleet


def _make_trouble(fleet: Fleet) -> None:
    """Traffic on every pod: healthy requests where they are healthy, and each fault."""
    pki, pods, issuer, certs = fleet.pki, fleet.pods, fleet.issuer, fleet.certs
    alice, bob, late = certs["alice"], certs["bob"], certs["late"]
    to_alice = issuer.mint(pki.alice)
    for name in ("healthy-single", "healthy-issuers", "faulty-report-only"):
        for _ in range(5):
            assert pods[name].request(pki, alice, to_alice) == 200, pods[name].output()
    assert pods["healthy-single"].request(pki, alice, None) == 401  # everyday refusals
    opaque = "opaque-token-of-alice"
    ACTIVE[opaque] = {
        "active": True,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": int(time.time()) + 600,
        "cnf": {"x5t#S256": thumbprint(pki.alice)},
    }
    for _ in range(3):
        assert pods["healthy-introspection"].request(pki, alice, opaque) == 200
    forwarded = {"Client-Cert": ":" + base64.b64encode(pki.alice.cert_der).decode() + ":"}
    for _ in range(3):
        assert pods["healthy-forwarded"].request(pki, None, to_alice, headers=forwarded) == 200
    for name in ("healthy-dpop", "faulty-dpop"):
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = public_jwk(key)
        bound = issuer.mint(None, cnf={"jkt": jwk_thumbprint(jwk)})
        pod = pods[name]
        proof = make_proof(
            key, jwk, htm="GET", htu=f"https://127.0.0.1:{pod.port}/orders", token=bound
        )
        status = pod.request(pki, alice, bound, scheme="DPoP", headers={"DPoP": proof})
        assert status == (200 if name == "healthy-dpop" else 503), pod.output()

    binding = pods["faulty-binding"]
    to_bob = issuer.mint(pki.bob)
    for _ in range(MISMATCHES):
        assert binding.request(pki, alice, to_bob) == 401
    # One token presented by two certificates that are not alice's. Each worker remembers the
    # foreign certificates it saw, and the kernel spreads connections over both workers: with
    # six of each, some worker sees both (all but 2 in 4096 orders).
    replayed = issuer.mint(pki.alice)
    for _ in range(REPLAYS // 2):
        assert binding.request(pki, bob, replayed) == 401
        assert binding.request(pki, late, replayed) == 401
    to_late = issuer.mint(fleet.late)
    for _ in range(UPSTREAM_ERRORS):
        assert binding.request(pki, late, to_late) == 502
    report_only = pods["faulty-report-only"]
    for _ in range(10):
        assert report_only.request(pki, alice, to_bob) == 200  # forwarded: report_only
    assert pods["faulty-introspection"].request(pki, certs["ocsp"], "opaque-unknown") == 503
    # listen.max_connections 1 per worker: idle connections beyond it are closed at once.
    idle = [
        socket.create_connection(("127.0.0.1", pods["faulty-dependencies"].port)) for _ in range(6)
    ]
    time.sleep(0.5)
    for sock in idle:
        sock.close()


def _trouble_the_process(fleet: Fleet) -> None:
    """faulty-process: a worker killed, a bad file reloaded, handshakes that never finish."""
    pod = fleet.pods["faulty-process"]
    deadline = time.monotonic() + 30
    victim = pod.workers()[0]
    os.kill(victim, signal.SIGKILL)
    while pod.output().count('"listening: mTLS') < 3 or len(pod.workers()) < 2:
        assert time.monotonic() < deadline, f"worker not restarted:\n{pod.output()}"
        time.sleep(0.1)
    good = pod.config_path.read_text()
    bad = yaml.safe_load(good)
    bad["listen"]["max_handshakes"] = 0
    pod.config_path.write_text(yaml.safe_dump(bad))
    assert pod.proc is not None
    os.kill(pod.proc.pid, signal.SIGHUP)
    while "reload refused: listen.max_handshakes" not in pod.output():
        assert time.monotonic() < deadline, f"reload not refused:\n{pod.output()}"
        time.sleep(0.1)
    pod.config_path.write_text(good)
    # TCP connections that never send a ClientHello: each is a handshake in progress until
    # listen.handshake_timeout_seconds.
    fleet.held.extend(socket.create_connection(("127.0.0.1", pod.port)) for _ in range(HALF_OPEN))


# ---------------------------------------------------------------------------------- the tests


def firing_by_pod(prometheus: Prometheus) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for alert, pod in prometheus.firing():
        out.setdefault(pod, set()).add(alert)
    return out


def test_every_alert_fires_under_its_fault(fleet: Fleet) -> None:
    prometheus = fleet.prometheus

    def all_fired() -> dict[str, set[str]] | None:
        now = firing_by_pod(prometheus)
        missing = {p: want - now.get(p, set()) for p, want in EXPECTED_FIRING.items()}
        return now if not any(missing.values()) else None

    try:
        prometheus.wait_for(all_fired, "every expected alert firing", timeout=60)
    except AssertionError:
        now = firing_by_pod(prometheus)
        missing = {p: sorted(want - now.get(p, set())) for p, want in EXPECTED_FIRING.items()}
        raise AssertionError(f"not firing: {missing}\nfiring: {now}") from None
    rules = {
        r["alert"] for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]
    }
    covered = set().union(*EXPECTED_FIRING.values())
    assert rules == covered, f"alerts without a fault here: {sorted(rules - covered)}"


def test_no_alert_is_ever_pending_or_firing_on_a_healthy_pod(fleet: Fleet) -> None:
    prometheus = fleet.prometheus
    # Long enough for every rule to have been evaluated on the traffic above (for: 2s).
    prometheus.wait_for(lambda: firing_by_pod(prometheus).get("faulty-binding"), "evaluations")
    time.sleep(3)
    healthy = "|".join(HEALTHY)
    ever = f'count_over_time(ALERTS{{pod=~"{healthy}"}}[10m])'
    seen = prometheus.query(f"count by (pod, alertname) ({ever})")
    assert seen == {}, f"alerts on healthy pods: {seen}"
    up = prometheus.query(f'up{{pod=~"{healthy}"}}')  # scraped, so "no alert" means something
    assert up == dict.fromkeys(HEALTHY, 1.0), up


def test_increase_sees_the_first_burst_on_a_fresh_pod(fleet: Fleet) -> None:
    """The mismatch and upstream-error series existed at 0 before their first event, so the
    whole first burst counts (without them increase() read 0)."""
    prometheus = fleet.prometheus
    selector = 'pod="faulty-binding", outcome="rejected", reason="thumbprint_mismatch"'
    expr = f"sum(increase(certbound_requests_total{{{selector}}}[5m]))"
    value = prometheus.wait_for(lambda: prometheus.query(expr).get("{}"), "the burst scraped")
    assert value >= MISMATCHES + REPLAYS  # the replays of one token are mismatches too
    failed = 'pod="faulty-binding", outcome="upstream_error"'
    errors = f"sum(increase(certbound_requests_total{{{failed}}}[5m]))"
    assert prometheus.query(errors)["{}"] >= UPSTREAM_ERRORS


def test_a_client_ca_removed_on_reload_leaves_prometheus_and_its_alert_resolves(
    fleet: Fleet,
) -> None:
    prometheus, pod = fleet.prometheus, fleet.pods["faulty-binding"]
    series = (
        "certbound_certificate_not_after_timestamp_seconds"
        '{pod="faulty-binding", role="client_ca", index="1"}'
    )
    prometheus.wait_for(lambda: prometheus.query(series), "the second client CA scraped")
    fleet.files["bundle"].write_bytes(fleet.pki.ca.cert_pem)
    deadline = time.monotonic() + 20
    while pod.output().count("TLS files reloaded") < 2:  # both workers
        assert time.monotonic() < deadline, pod.output()
        time.sleep(0.2)
    prometheus.wait_for(lambda: not prometheus.query(series), "the series gone", timeout=20)
    prometheus.wait_for(
        lambda: ("CertboundClientCaExpiringSoon", "faulty-binding") not in prometheus.firing(),
        "the alert resolved",
        timeout=20,
    )
    # Several scrapes later (either worker answering), it is still gone.
    time.sleep(3)
    assert not prometheus.query(series)
    kept = series.replace('index="1"', 'index="0"')
    assert prometheus.query(kept)


def test_process_memory_and_cpu_per_pod_come_from_every_process(fleet: Fleet) -> None:
    """The dashboard's per-pod memory and CPU queries, answered for pods with two workers."""
    prometheus = fleet.prometheus
    only_certbound = (
        " * on (job, instance) group_left() max by (job, instance) (certbound_build_info)"
    )
    processes = prometheus.query("count by (pod) (process_resident_memory_bytes)")
    assert processes == dict.fromkeys(fleet.pods, 3.0)  # the supervisor and two workers
    memory = prometheus.query(
        f"sum by (namespace, pod) (process_resident_memory_bytes{only_certbound})"
    )
    assert set(memory) == set(fleet.pods) and min(memory.values()) > 10e6
    cpu = f"sum by (namespace, pod) (rate(process_cpu_seconds_total[1m]){only_certbound})"
    assert set(prometheus.wait_for(lambda: prometheus.query(cpu), "CPU rates")) == set(fleet.pods)


def test_every_dashboard_panel_gets_data_from_the_fleet(fleet: Fleet) -> None:
    """Each panel's queries, run as Grafana would (all namespaces and pods), return data from
    these pods."""
    by_panel: dict[str, list[str]] = {}
    for title, expr in dashboard_exprs():
        by_panel.setdefault(title, []).append(expr)
    empty = []
    for title, exprs in by_panel.items():
        plain = [
            e.replace("$__rate_interval", "1m").replace('"$namespace"', '".*"')
            .replace('"$pod"', '".*"')
            for e in exprs
        ]  # fmt: skip
        if not any(fleet.prometheus.query(e) for e in plain):
            empty.append(title)
    assert not empty, f"panels without data: {empty}"

"""Every metric, defined once. Labels come only from closed sets (enums), never from a
subject, client id, path, token or thumbprint, so cardinality cannot be driven by clients."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from proxy import __version__
from proxy.errors import HandshakeFailure, Outcome, Reason

# Sub-millisecond resolution at the low end: the proxy's own cost is what we are watching.
_OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_UPSTREAM_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# issuer: the configured name (or index) of the issuer whose token was judged; "" before a
# token named one. Never a URL from a token: a closed set from the configuration.
REQUESTS = Counter(
    "certbound_requests",
    "Requests by final outcome, reason and token issuer.",
    ["outcome", "reason", "issuer"],
)


def count(outcome: Outcome, reason: Reason, issuer: str = "") -> None:
    """One decision, labelled with the same spellings as the audit log and error bodies."""
    REQUESTS.labels(outcome=outcome.value, reason=reason.value, issuer=issuer).inc()


class ForwardedOk(dict[str, Counter]):
    """The series every forwarded request bumps, by issuer name ("" on public routes), each
    resolved once: labels() costs a lock and a tuple per call, which shows up in the profile
    at a few thousand requests per second."""

    def __missing__(self, issuer: str) -> Counter:
        series = self[issuer] = REQUESTS.labels(
            outcome=Outcome.FORWARDED.value, reason=Reason.OK.value, issuer=issuer
        )
        return series


def forwarded_ok_series(issuers: tuple[str, ...]) -> ForwardedOk:
    series = ForwardedOk()
    for name in ("", *issuers):
        series[name]
    return series


# One token presented, within REPLAY_WINDOW_SECONDS, by a foreign certificate other than the
# last foreign one seen for it (proxy/replay.py): the leaked-token pattern, counted without
# a token or thumbprint label.
FOREIGN_CERTIFICATE_SWITCHES = Counter(
    "certbound_foreign_certificate_switches",
    "Binding mismatches where a token came from a different foreign certificate than the "
    "last one seen for it within 10 minutes (per process).",
    ["issuer"],
)
OVERHEAD = Histogram(
    "certbound_overhead_seconds",
    "Time the proxy spends on a request, excluding the wait for the upstream.",
    buckets=_OVERHEAD_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "certbound_upstream_duration_seconds",
    "Time from sending a request upstream to receiving the response headers.",
    buckets=_UPSTREAM_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "certbound_upstream_errors", "Failed upstream exchanges by kind.", ["kind"]
)
IN_FLIGHT = Gauge(
    "certbound_in_flight_requests", "Requests being handled now.", multiprocess_mode="livesum"
)
OPEN_CONNECTIONS = Gauge(
    "certbound_open_connections",
    "Open client connections on the mTLS listener.",
    multiprocess_mode="livesum",
)
UPGRADED_CONNECTIONS = Gauge(
    "certbound_upgraded_connections",
    "Client connections upgraded (WebSocket) and relaying bytes both ways now.",
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED = Counter(
    "certbound_connections_refused",
    "Client connections closed at once because listen.max_connections were open.",
)
JWKS_REFRESH = Counter(
    "certbound_jwks_refresh", "Key set loads by result and issuer.", ["result", "issuer"]
)
JWKS_KEYS = Gauge(
    "certbound_jwks_keys",
    "Signing keys loaded, per issuer.",
    ["issuer"],
    multiprocess_mode="livemax",
)
JWKS_LAST_SUCCESS = Gauge(
    "certbound_jwks_last_success_timestamp_seconds",
    "Unix time of the last successful key set load, per issuer.",
    ["issuer"],
    multiprocess_mode="livemax",
)
CERT_NOT_AFTER = Gauge(
    "certbound_certificate_not_after_timestamp_seconds",
    "Expiry of the serving certificate and of each client CA.",
    ["role", "index"],
    multiprocess_mode="livemin",
)
TLS_HANDSHAKE_FAILURES = Counter(
    "certbound_tls_handshake_failures",
    "Connections on the mTLS listener that failed before a request: TLS handshake refusals, "
    "revoked certificates, plain HTTP and timeouts, by reason.",
    ["reason"],
)
# Remaining validity of presented client certificates: one day to one year, so a rotation that
# is about to break bound tokens shows up before it does.
_DAY = 86400.0
_VALIDITY_BUCKETS = tuple(d * _DAY for d in (1, 2, 7, 14, 30, 60, 90, 180, 365))
CLIENT_CERT_REMAINING = Histogram(
    "certbound_client_cert_remaining_validity_seconds",
    "Seconds until the presented client certificate expires, observed once per connection.",
    buckets=_VALIDITY_BUCKETS,
)
REVOCATION_CHECKS = Counter(
    "certbound_revocation_checks",
    "Client certificates checked against tls.crl_files, by result (good, revoked, unknown).",
    ["result"],
)
CRL_LAST_UPDATE = Gauge(
    "certbound_crl_last_update_timestamp_seconds",
    "lastUpdate (thisUpdate) of each loaded CRL; index is its position in tls.crl_files.",
    ["index"],
    multiprocess_mode="livemin",
)
CRL_NEXT_UPDATE = Gauge(
    "certbound_crl_next_update_timestamp_seconds",
    "nextUpdate of each loaded CRL: after it, the CRL no longer answers (revocation_unknown).",
    ["index"],
    multiprocess_mode="livemin",
)
CRL_FETCH_LAST_SUCCESS = Gauge(
    "certbound_crl_fetch_last_success_timestamp_seconds",
    "Unix time of the last good download of each tls.fetch_crls source (0: none yet); index "
    "follows tls.crl_files, and start-up logs the URL of each.",
    ["index"],
    multiprocess_mode="livemin",
)
CRL_FETCH_FAILURES = Counter(
    "certbound_crl_fetch_failures",
    "Downloads from a CRL distribution point that gave no usable CRL (the last good one stays).",
    ["index"],
)
OCSP_ANSWERS = Counter(
    "certbound_ocsp_answers",
    "tls.ocsp questions by answer: good, revoked, unknown (the responder does not know the "
    "certificate), error (unreachable, refused, unsigned, stale or unreadable answer).",
    ["status"],
)
DPOP_REPLAY_CACHE_FAILURES = Counter(
    "certbound_dpop_replay_cache_failures",
    "DPoP proofs whose jti the shared replay cache (dpop.replay_cache) could not record in "
    "time, by what was done: refused (503) or allowed (dpop.replay_cache_unavailable: allow).",
    ["outcome"],
)
DPOP_REPLAY_CACHE_UNAVAILABLE_ALLOWED = Gauge(
    "certbound_dpop_replay_cache_unavailable_allowed",
    "1 when dpop.replay_cache_unavailable is allow: a proof is accepted unchecked for replay "
    "while the shared replay cache does not answer.",
    multiprocess_mode="livemax",
)
REVOCATION_UNAVAILABLE_ALLOWED = Gauge(
    "certbound_revocation_unavailable_allowed",
    "1 when tls.revocation_unavailable is allow: a certificate whose revocation status is "
    "unknown is accepted.",
    multiprocess_mode="livemax",
)
REPORT_ONLY = Gauge(
    "certbound_report_only",
    "1 when binding.mode report_only is configured anywhere (requests are not refused).",
    multiprocess_mode="livemax",
)
BUILD_INFO = Gauge(
    "certbound_build_info", "Build information.", ["version"], multiprocess_mode="livemax"
)
BUILD_INFO.labels(version=__version__).set(1)
# Series that alerts use with increase()/rate() must exist before their first event (the
# per-issuer ones are made when the issuers are: tokens/jwks.py, pipeline.py).
# send_timeout: a response cut because the client stopped reading; body_timeout: a request
# body that stalled after it had reached the workload.
for _kind in ("connect", "timeout", "reset", "send_timeout", "body_timeout"):
    UPSTREAM_ERRORS.labels(kind=_kind)
for _result in ("good", "revoked", "unknown"):
    REVOCATION_CHECKS.labels(result=_result)
for _status in ("good", "revoked", "unknown", "error"):
    OCSP_ANSWERS.labels(status=_status)
for _failure in HandshakeFailure:
    TLS_HANDSHAKE_FAILURES.labels(reason=_failure.value)


def registry() -> CollectorRegistry:
    """What /metrics serves: this process, or every worker's files in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    aggregated = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregated)  # type: ignore[no-untyped-call]
    return aggregated

"""Every metric, defined once. Labels come only from closed sets (enums), never from a
subject, client id, path, token or thumbprint, so cardinality cannot be driven by clients."""

from __future__ import annotations

import warnings

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from proxy import __version__
from proxy.errors import REFUSALS, HandshakeFailure, Outcome, Reason

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


# The reasons each outcome can carry: alerts and panels take rate()/increase() of these, which
# cannot see the step from "no series" to the first count, so every one exists from the start.
UPSTREAM_REASONS = (Reason.UPSTREAM_CONNECT, Reason.UPSTREAM_TIMEOUT, Reason.UPSTREAM_RESET)
# What binding.mode report_only forwards instead of refusing: the failures of the binding step
# (checks/pipeline.py _bind, and the shared DPoP replay cache).
BINDING_REASONS = (
    Reason.MISSING_CNF,
    Reason.INVALID_CNF,
    Reason.THUMBPRINT_MISMATCH,
    Reason.INVALID_DPOP_PROOF,
    Reason.BEARER_TOKEN_AS_DPOP,
    Reason.WRONG_BINDING_KIND,
    *(r for r in Reason if r.value.startswith("dpop_")),
)
_OUTCOME_REASONS = {
    Outcome.FORWARDED: (Reason.OK,),
    Outcome.REJECTED: tuple(r for r in REFUSALS if r not in UPSTREAM_REASONS),
    Outcome.REPORT_ONLY: BINDING_REASONS,
    Outcome.UPSTREAM_ERROR: UPSTREAM_REASONS,
}


def create_request_series(issuers: tuple[str, ...], *, is_report_only: bool) -> None:
    """Every (outcome, reason, issuer) series that can happen, at 0: 108 with one issuer, 150
    with report_only configured (issuer "" is a refusal before a token named one)."""
    for outcome, reasons in _OUTCOME_REASONS.items():
        if outcome is Outcome.REPORT_ONLY and not is_report_only:
            continue
        for reason in reasons:
            for issuer in ("", *issuers):
                REQUESTS.labels(outcome=outcome.value, reason=reason.value, issuer=issuer)


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
# kind: connections (listen.max_connections were open) or handshakes (listen.max_handshakes
# were in progress: the oldest one was cut to make room).
CONNECTIONS_REFUSED = Counter(
    "certbound_connections_refused",
    "Client connections closed by a cap, by kind: connections (a new connection while "
    "listen.max_connections were open) or handshakes (the oldest TLS handshake in progress, "
    "cut because listen.max_handshakes were).",
    ["kind"],
)
HANDSHAKES_IN_PROGRESS = Gauge(
    "certbound_handshakes_in_progress",
    "Client connections accepted whose TLS handshake has not completed.",
    multiprocess_mode="livesum",
)
WORKER_RESTARTS = Counter(
    "certbound_worker_restarts",
    "Worker processes the supervisor started again after one died (listen.workers > 1).",
)
WORKERS_SERVING = Gauge(
    "certbound_workers_serving",
    "Worker processes whose listeners are up (1 without a supervisor).",
    multiprocess_mode="livemax",
)
CONFIG_RELOADS = Counter(
    "certbound_config_reloads",
    "SIGHUP reloads of the configuration file by result: success (the process serves the new "
    "file) or failure (refused; the running configuration stays).",
    ["result"],
)
# Key sets exist only for issuers whose JWTs are verified (tokens.accept_jwt); an issuer that
# only introspects has the introspection counter instead, so no key-set alert can fire on it.
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
INTROSPECTION_REQUESTS = Counter(
    "certbound_introspection_requests",
    "Token introspection (RFC 7662) questions asked, by issuer and result: active, inactive, "
    "or error (unreachable, not HTTP 200, not a JSON object). Cached answers are not counted.",
    ["issuer", "result"],
)
INTROSPECTION_RESULTS = ("active", "inactive", "error")
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
# Remaining validity of presented client certificates: ten minutes (SPIFFE SVIDs live an
# hour) to one year. The bounds are what the chart's minRemainingSeconds may name.
_HOUR = 3600.0
_DAY = 86400.0
REMAINING_VALIDITY_BUCKETS = (
    600.0,
    _HOUR,
    4 * _HOUR,
    12 * _HOUR,
    *(d * _DAY for d in (1, 2, 7, 14, 30, 60, 90, 180, 365)),
)
CLIENT_CERT_REMAINING = Histogram(
    "certbound_client_cert_remaining_validity_seconds",
    "Seconds until the presented client certificate expires, observed once per connection.",
    buckets=REMAINING_VALIDITY_BUCKETS,
)
# How far into its own lifetime a presented certificate is (0 issued now, 1 expired): short-
# lived certificates (SVIDs, mesh workload certificates) always have few days left, but a
# healthy one is renewed at about 2/3 of its life (cert-manager's default), so a certificate
# seen past 0.9 was not renewed in time. The bounds are what the chart's fraction may name.
LIFETIME_ELAPSED_BUCKETS = (0.25, 0.5, 0.67, 0.75, 0.8, 0.9, 0.95, 0.99, 1.0)
CLIENT_CERT_LIFETIME_ELAPSED = Histogram(
    "certbound_client_cert_lifetime_elapsed_ratio",
    "Fraction of its validity period (notBefore to notAfter) the presented client certificate "
    "has used, observed once per connection.",
    buckets=LIFETIME_ELAPSED_BUCKETS,
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
# Series that alerts and panels read with increase()/rate() exist at 0 before their first
# event; the per-issuer ones are made when the issuers are (create_request_series from
# checks/pipeline.py, tokens/jwks.py, tokens/introspect.py).
# send_timeout: a response cut because the client stopped reading; body_timeout: a request
# body that stalled after it had reached the workload.
for _kind in ("connect", "timeout", "reset", "send_timeout", "body_timeout"):
    UPSTREAM_ERRORS.labels(kind=_kind)
for _result in ("good", "revoked", "unknown"):
    REVOCATION_CHECKS.labels(result=_result)
for _status in ("good", "revoked", "unknown", "error"):
    OCSP_ANSWERS.labels(status=_status)
for _kind in ("connections", "handshakes"):
    CONNECTIONS_REFUSED.labels(kind=_kind)
for _result in ("success", "failure"):
    CONFIG_RELOADS.labels(result=_result)
for _failure in HandshakeFailure:
    TLS_HANDSHAKE_FAILURES.labels(reason=_failure.value)

# Series named after something the configuration can take away (an issuer, a certificate's or
# CRL's position), with the labels that name it. With one process, the code that takes it away
# removes the series (clear(), retire()); in multiprocess mode the workers' files keep every
# series ever written, so /metrics keeps only those whose names this process still has
# (proxy/exposition.py).
PER_ISSUER: tuple[MetricWrapperBase, ...] = (
    REQUESTS,
    FOREIGN_CERTIFICATE_SWITCHES,
    JWKS_REFRESH,
    JWKS_KEYS,
    JWKS_LAST_SUCCESS,
    INTROSPECTION_REQUESTS,
)
PER_FETCHED_CRL: tuple[MetricWrapperBase, ...] = (CRL_FETCH_LAST_SUCCESS, CRL_FETCH_FAILURES)
RETIRING_LABELS: dict[MetricWrapperBase, tuple[str, ...]] = {
    **dict.fromkeys(PER_ISSUER, ("issuer",)),
    **dict.fromkeys(PER_FETCHED_CRL, ("index",)),
    CERT_NOT_AFTER: ("role", "index"),
    CRL_LAST_UPDATE: ("index",),
    CRL_NEXT_UPDATE: ("index",),
}


# prometheus-client warns that clear() and remove() do not reach the multiprocess files; the
# scrape filter (proxy/exposition.py) drops what they remove, so the warning would only tell
# operators, at every start and reload, of a problem they do not have.
warnings.filterwarnings(
    "ignore", message="(Clearing|Removal of) labels has not been implemented", category=UserWarning
)


def retire(families: tuple[MetricWrapperBase, ...], label: str, kept: set[str]) -> None:
    """Remove the series whose `label` is not in `kept`: an issuer or a fetched CRL that a
    new configuration (a SIGHUP reload builds a new proxy) no longer has."""
    for metric in families:
        names: tuple[str, ...] = metric._labelnames  # no public accessor in prometheus-client
        [family] = metric.collect()
        gone = {
            tuple(s.labels[n] for n in names) for s in family.samples if s.labels[label] not in kept
        }
        for values in gone:
            metric.remove(*values)

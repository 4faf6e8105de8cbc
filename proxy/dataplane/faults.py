"""A failed exchange with the workload, named by kind: the metric label and the client's answer."""

from __future__ import annotations

from proxy import metrics
from proxy.errors import AuthError, Reason


class UpstreamFault(Exception):
    """A failed exchange with the workload, by kind (the metric label) and client answer."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind

    def count(self) -> AuthError:
        """Count the fault and say what the client gets: 504 for a timeout, 502 otherwise."""
        metrics.UPSTREAM_ERRORS.labels(kind=self.kind).inc()
        if self.kind == "timeout":
            return AuthError(Reason.UPSTREAM_TIMEOUT, "upstream did not answer in time")
        if self.kind == "connect":
            return AuthError(Reason.UPSTREAM_CONNECT, "upstream is unreachable")
        return AuthError(Reason.UPSTREAM_RESET, "upstream closed the connection")

"""The decision log: one JSON line per refusal (and optionally per forwarded request).

Never the token, a key or a whole certificate: only the token's id (jti, else a short hash),
sub/client_id/iss, the configured issuer's name and the two thumbprints, which is what a
responder needs to correlate replay attempts (`certbound audit report`, audit_report.py).
Lines go through a queue to a writer thread, so a slow stdout never stalls the event loop.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from dataclasses import dataclass

from proxy.errors import Outcome, Reason

_log = logging.getLogger("certbound.audit")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    outcome: Outcome
    reason: Reason
    method: str
    path: str
    remote: str
    status: int
    thumbprint: str = ""
    cnf_thumbprint: str = ""
    jti: str = ""
    sub: str = ""
    client_id: str = ""
    iss: str = ""
    issuer: str = ""  # the configured issuer's name (or index); a metric label too
    token_id: str = ""


def write(record: AuditRecord) -> None:
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "log": "audit",
        "outcome": record.outcome.value,
        "reason": record.reason.value,
        "status": record.status,
        "method": record.method,
        "path": record.path,
        "remote": record.remote,
        "thumbprint": record.thumbprint,
        "cnf_thumbprint": record.cnf_thumbprint,
        "jti": record.jti,
        "sub": record.sub,
        "client_id": record.client_id,
        "iss": record.iss,
        "issuer": record.issuer,
        "token_id": record.token_id,
    }
    _log.info(json.dumps(line, separators=(",", ":")))


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "certbound.audit":
            return record.getMessage()
        return json.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + "Z",
                "log": record.name,
                "level": record.levelname.lower(),
                "message": record.getMessage(),
            },
            separators=(",", ":"),
        )


def setup_logging(level: str) -> logging.handlers.QueueListener:
    """JSON lines on stdout through a background writer thread. Returns the listener to stop."""
    _JSONFormatter.converter = time.gmtime
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(_JSONFormatter())
    listener = logging.handlers.QueueListener(lines, stream, respect_handler_level=False)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(lines)]
    root.setLevel(level.upper())
    logging.getLogger("certbound.audit").setLevel(logging.INFO)
    # aiohttp's access log would duplicate the audit log and print every path.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    listener.start()
    return listener

"""How many connections a worker may hold: the configured caps, lowered so that a flood up to
them fits the memory the container has (listen.memory_budget_mib, or the cgroup's limit).

Pure arithmetic on figures measured with bench/memory.py (rounded up), plus one read of the
cgroup at the edge. Request bodies held before an upstream connection (listen.request_buffer_bytes)
get their own share, enforced by dataplane/bodies.py. Not counted: responses in flight and what
caches hold; that is what the quarter of the budget left over is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.settings import ListenSettings

MIB = 1 << 20
KIB = 1 << 10
# Measured on CPython 3.11 + OpenSSL 3 (bench/memory.py): 49 KiB for a handshake waiting after
# its ClientHello, 34 KiB for an idle mTLS connection, 13 KiB for a silent TCP connection;
# a worker starts at 56 MiB and a supervisor at 30 MiB.
HANDSHAKE_BYTES = 64 * KIB
CONNECTION_BYTES = 48 * KIB
WORKER_BASELINE_BYTES = 64 * MIB
SUPERVISOR_BYTES = 32 * MIB
BUDGET_SHARE = 0.75  # what the caps may plan for; the rest is headroom
# Of a worker's share, what request bodies not yet sent upstream may hold in total: each
# connection may buffer listen.request_buffer_bytes, so without a total a flood of admitted
# uploads would hold connections x buffer.
BODY_SHARE = 0.125
MIN_BODY_BYTES = 1 * MIB
# Below these a worker could not serve at all; a budget that small is warned about instead.
MIN_HANDSHAKES = 16
MIN_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class Caps:
    max_connections: int
    max_handshakes: int
    budget_bytes: int  # 0: none known, the configured caps alone
    is_budget_too_small: bool = False
    body_bytes: int = 0  # request bodies held before an upstream connection; 0: no total

    def describe(self) -> str:
        where = (
            f"memory budget {self.budget_bytes // MIB} MiB"
            if self.budget_bytes
            else ("no memory budget (no listen.memory_budget_mib, no cgroup limit)")
        )
        bodies = (
            f", {self.body_bytes // MIB} MiB of request bodies buffered" if self.body_bytes else ""
        )
        return (
            f"{where}: at most {self.max_connections} connections, "
            f"{self.max_handshakes} of them in their TLS handshake{bodies}, per worker"
        )


def connection_caps(listen: ListenSettings, workers: int, budget_bytes: int) -> Caps:
    """The caps a worker applies: listen.max_connections and listen.max_handshakes, lowered
    so that `workers` workers at their caps (and a supervisor, with more than one) stay
    within BUDGET_SHARE of `budget_bytes`. Handshakes get at most half of a worker's share,
    buffered request bodies BODY_SHARE of it, connections the rest."""
    configured_handshakes = min(listen.max_handshakes, listen.max_connections)
    if budget_bytes <= 0:
        return Caps(listen.max_connections, configured_handshakes, 0)
    planned = budget_bytes * BUDGET_SHARE - (SUPERVISOR_BYTES if workers > 1 else 0)
    per_worker = int(planned / workers) - WORKER_BASELINE_BYTES
    handshakes = min(configured_handshakes, max(0, per_worker) // 2 // HANDSHAKE_BYTES)
    bodies = max(MIN_BODY_BYTES, int(max(0, per_worker) * BODY_SHARE))
    rest = per_worker - handshakes * HANDSHAKE_BYTES - bodies
    connections = min(listen.max_connections, handshakes + max(0, rest) // CONNECTION_BYTES)
    too_small = handshakes < MIN_HANDSHAKES or connections < MIN_CONNECTIONS
    return Caps(
        max_connections=max(connections, min(MIN_CONNECTIONS, listen.max_connections)),
        max_handshakes=max(handshakes, min(MIN_HANDSHAKES, configured_handshakes)),
        budget_bytes=budget_bytes,
        is_budget_too_small=too_small,
        body_bytes=bodies,
    )


def cgroup_memory_limit() -> int:
    """The container's memory limit in bytes (cgroup v2, else v1), or 0 when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 50:  # v1 says "no limit" with a huge number
            return int(text)
        return 0
    return 0


def memory_budget(listen: ListenSettings) -> int:
    """listen.memory_budget_mib in bytes; 0 there means the cgroup's limit (or none)."""
    if listen.memory_budget_mib > 0:
        return listen.memory_budget_mib * MIB
    return cgroup_memory_limit()

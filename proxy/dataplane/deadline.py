"""When a client connection's one timer fires: which deadline applies, and what to do once it
has passed. Pure: the connection's state and `now` in, a verdict out; the connection arms
the timer and carries the verdict out. No clock, no loop, no I/O here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# A client whose send buffer has not shrunk for this long while others wait for a pool
# connection gives its upstream connection up: a stalled reader must not make good clients
# wait out the whole send timeout (nginx frees the upstream by buffering the response).
STALL_GRACE = 0.5


class Phase(enum.Enum):
    """What the connection is waiting for; the first that holds, in this order, decides."""

    HANDSHAKE = "handshake"  # the TLS handshake is not complete
    SENDING = "sending"  # our writes wait on a client whose send buffer is full
    TUNNEL = "tunnel"  # upgraded (101): bytes relayed both ways
    HEAD = "head"  # a request head has begun and not ended
    BODY = "body"  # a request body is arriving
    WORKLOAD = "workload"  # the request is in; the workload's answer (or the 101) is awaited
    KEEP_ALIVE = "keep_alive"  # between requests


class Action(enum.Enum):
    WAIT = "wait"  # not yet: fire again after `delay`
    ABORT_HANDSHAKE = "abort_handshake"  # counted as a handshake timeout, then aborted
    CLOSE = "close"  # idle, slow head or tunnel idle: close_notify, then FIN
    ABORT_SEND = "abort_send"  # a stalled reader: abort, since close would wait on its buffer
    BODY_TIMED_OUT = "body_timed_out"  # 408 if its request is the one being answered


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The settings, in seconds (listen.*, upstream.upgrade_idle_timeout_seconds)."""

    handshake: float
    idle: float
    body: float
    send: float
    upgrade_idle: float
    stall_grace: float = STALL_GRACE


@dataclass(frozen=True, slots=True)
class Moments:
    """The connection's clock readings the deadlines count from (monotonic seconds)."""

    opened: float  # accepted
    last: float  # the last byte either way, or the end of the last exchange
    head_started: float  # the current head's first byte
    body_progress: float  # the request body's last byte, or the last time we held it back
    send_progress: float  # the client's send buffer last shrank
    is_upstream_wanted: bool = False  # it holds an upstream connection others queue for


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    delay: float = 0.0  # for WAIT
    stalled: float = 0.0  # for ABORT_SEND: seconds without progress
    was_upstream_wanted: bool = False  # for ABORT_SEND: cut short by the stall grace


def decide(phase: Phase, moments: Moments, timeouts: Timeouts, now: float) -> Verdict:
    if phase is Phase.SENDING:
        return _send_progress(moments, timeouts, now)
    if phase is Phase.WORKLOAD:
        # The upstream timeout governs the workload; the client is not late.
        return Verdict(Action.WAIT, timeouts.idle)
    if phase is Phase.HANDSHAKE:
        deadline, action = moments.opened + timeouts.handshake, Action.ABORT_HANDSHAKE
    elif phase is Phase.TUNNEL:
        deadline, action = moments.last + timeouts.upgrade_idle, Action.CLOSE
    elif phase is Phase.HEAD:
        # From the head's first byte, not the last: a slowloris client dribbling one byte a
        # second never looks idle.
        deadline, action = moments.head_started + timeouts.idle, Action.CLOSE
    elif phase is Phase.BODY:
        deadline, action = moments.body_progress + timeouts.body, Action.BODY_TIMED_OUT
    else:
        deadline, action = moments.last + timeouts.idle, Action.CLOSE
    if now < deadline:
        return Verdict(Action.WAIT, deadline - now)
    return Verdict(action)


def _send_progress(moments: Moments, timeouts: Timeouts, now: float) -> Verdict:
    """listen.send_timeout_seconds without the buffer shrinking; or the stall grace, while
    the upstream connection it holds is wanted by requests waiting for the pool."""
    stalled = now - moments.send_progress
    deadline = moments.send_progress + timeouts.send
    cut_short = stalled >= timeouts.stall_grace and moments.is_upstream_wanted
    if now < deadline and not cut_short:
        return Verdict(Action.WAIT, min(deadline - now, timeouts.stall_grace))
    return Verdict(Action.ABORT_SEND, stalled=stalled, was_upstream_wanted=now < deadline)

"""The deadline decision alone: each phase's deadline, the moment on either side of it, and
what is done once it has passed. Pure function, no clock: `now` is an argument."""

from __future__ import annotations

import pytest

from proxy.dataplane.deadline import STALL_GRACE, Action, Moments, Phase, Timeouts, decide

TIMEOUTS = Timeouts(handshake=10.0, idle=60.0, body=30.0, send=20.0, upgrade_idle=300.0)
T0 = 1000.0  # every moment starts here; deadlines are T0 + a timeout
JUST = 0.001


def moments(**changes: float | bool) -> Moments:
    fields: dict[str, float | bool] = {
        "opened": T0,
        "last": T0,
        "head_started": T0,
        "body_progress": T0,
        "send_progress": T0,
    }
    fields.update(changes)
    return Moments(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phase", "timeout", "action"),
    [
        (Phase.HANDSHAKE, TIMEOUTS.handshake, Action.ABORT_HANDSHAKE),
        (Phase.HEAD, TIMEOUTS.idle, Action.CLOSE),
        (Phase.KEEP_ALIVE, TIMEOUTS.idle, Action.CLOSE),
        (Phase.BODY, TIMEOUTS.body, Action.BODY_TIMED_OUT),
        (Phase.TUNNEL, TIMEOUTS.upgrade_idle, Action.CLOSE),
        (Phase.SENDING, TIMEOUTS.send, Action.ABORT_SEND),
    ],
)
def test_each_deadline_waits_until_it_passes_then_acts(
    phase: Phase, timeout: float, action: Action
) -> None:
    before = decide(phase, moments(), TIMEOUTS, T0 + timeout - JUST)
    assert before.action is Action.WAIT and before.delay == pytest.approx(JUST)
    assert decide(phase, moments(), TIMEOUTS, T0 + timeout).action is action
    assert decide(phase, moments(), TIMEOUTS, T0 + timeout + JUST).action is action


@pytest.mark.parametrize(
    ("phase", "timeout"),
    [
        (Phase.HANDSHAKE, TIMEOUTS.handshake),
        (Phase.HEAD, TIMEOUTS.idle),
        (Phase.KEEP_ALIVE, TIMEOUTS.idle),
        (Phase.BODY, TIMEOUTS.body),
        (Phase.TUNNEL, TIMEOUTS.upgrade_idle),
    ],
)
def test_an_early_timer_is_rearmed_for_exactly_the_time_left(phase: Phase, timeout: float) -> None:
    verdict = decide(phase, moments(), TIMEOUTS, T0 + 1.0)
    assert verdict.action is Action.WAIT
    assert verdict.delay == pytest.approx(timeout - 1.0)


def test_keep_alive_counts_from_the_last_byte_and_handshake_from_the_accept() -> None:
    later = moments(last=T0 + 50.0)
    assert decide(Phase.KEEP_ALIVE, later, TIMEOUTS, T0 + 60.0 + JUST).action is Action.WAIT
    # A client dribbling handshake bytes never moves the handshake deadline.
    assert decide(Phase.HANDSHAKE, later, TIMEOUTS, T0 + 10.0).action is Action.ABORT_HANDSHAKE


def test_a_slowloris_head_counts_from_its_first_byte_not_its_last() -> None:
    dribbling = moments(head_started=T0, last=T0 + 59.0)
    assert decide(Phase.HEAD, dribbling, TIMEOUTS, T0 + 60.0).action is Action.CLOSE


def test_a_body_that_progresses_moves_its_deadline() -> None:
    progressed = moments(body_progress=T0 + 25.0)
    assert decide(Phase.BODY, progressed, TIMEOUTS, T0 + 30.0 + JUST).action is Action.WAIT
    assert decide(Phase.BODY, progressed, TIMEOUTS, T0 + 55.0).action is Action.BODY_TIMED_OUT


def test_waiting_on_the_workload_never_times_the_client_out() -> None:
    for now in (T0, T0 + 1e6):
        verdict = decide(Phase.WORKLOAD, moments(), TIMEOUTS, now)
        assert verdict.action is Action.WAIT and verdict.delay == TIMEOUTS.idle


def test_a_stalled_reader_is_checked_at_least_every_stall_grace() -> None:
    verdict = decide(Phase.SENDING, moments(), TIMEOUTS, T0 + 1.0)
    assert verdict.action is Action.WAIT and verdict.delay == STALL_GRACE


def test_a_stalled_reader_holding_a_wanted_upstream_is_cut_after_the_stall_grace() -> None:
    wanted = moments(is_upstream_wanted=True)
    before = decide(Phase.SENDING, wanted, TIMEOUTS, T0 + STALL_GRACE - JUST)
    assert before.action is Action.WAIT
    after = decide(Phase.SENDING, wanted, TIMEOUTS, T0 + STALL_GRACE)
    assert after.action is Action.ABORT_SEND
    assert after.was_upstream_wanted and after.stalled == pytest.approx(STALL_GRACE)


def test_a_stalled_reader_nobody_waits_for_gets_the_whole_send_timeout() -> None:
    idle_pool = moments(is_upstream_wanted=False)
    assert decide(Phase.SENDING, idle_pool, TIMEOUTS, T0 + 20.0 - JUST).action is Action.WAIT
    after = decide(Phase.SENDING, idle_pool, TIMEOUTS, T0 + 20.0)
    assert after.action is Action.ABORT_SEND and not after.was_upstream_wanted


def test_a_send_timeout_shorter_than_the_grace_is_kept() -> None:
    short = Timeouts(handshake=1, idle=1, body=1, send=0.2, upgrade_idle=1)
    verdict = decide(Phase.SENDING, moments(), short, T0 + 0.1)
    assert verdict.action is Action.WAIT and verdict.delay == pytest.approx(0.1)
    assert decide(Phase.SENDING, moments(), short, T0 + 0.2).action is Action.ABORT_SEND

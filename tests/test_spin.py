"""The adaptive spin before a reply wait (snakepit/_backends/process/spin.py), with scripted polls."""

from __future__ import annotations

import pytest

from snakepit._backends.process import spin
from snakepit._backends.process.spin import MAX_SPIN, Spin

READY = [(3, 1)]


def never(timeout: int) -> list:
    assert timeout == 0  # a spin never blocks
    return []


def after(polls: int):
    """A poll that reports ready at its ``polls``-th call."""
    count = 0

    def poll(timeout: int) -> list:
        nonlocal count
        assert timeout == 0
        count += 1
        return READY if count >= polls else []

    return poll


@pytest.fixture(autouse=True)
def awake_clock(monkeypatch):
    """A clock that advances a microsecond per reading: a spinner that is never descheduled,
    whatever else this machine runs (the real clock would make these tests flaky under load).
    Tests that need another clock patch over it."""
    clock = [0.0]

    def tick() -> float:
        clock[0] += 1e-6
        return clock[0]

    monkeypatch.setattr(spin, "perf_counter", tick)
    return clock


def test_a_reply_caught_while_spinning_keeps_the_spin_on():
    policy = Spin()
    for _ in range(10):
        assert policy.poll(after(3)) == READY
    assert policy.budget == MAX_SPIN and policy.misses == 0


def test_misses_turn_the_spin_off_and_it_is_probed_again_later(awake_clock):
    policy = Spin()
    started = awake_clock[0]
    assert policy.poll(never) == [] and policy.budget == MAX_SPIN  # one miss: still on
    assert policy.poll(never) == [] and policy.budget == 0.0  # two: off
    assert awake_clock[0] - started <= 2 * (MAX_SPIN + 2e-6)  # each spin ends at its budget
    calls = 0

    def counting(timeout: int) -> list:
        nonlocal calls
        calls += 1
        return []

    for _ in range(spin._PROBE_EVERY - 1):
        assert policy.poll(counting) == []
    assert calls == 0  # off: no poll at all, the caller blocks at once
    assert policy.poll(after(2)) == READY  # the probe, and it pays: on again
    assert policy.budget == MAX_SPIN


def test_a_reply_that_came_while_the_spinner_was_descheduled_counts_as_a_miss(monkeypatch):
    """Worker and owner on one core: the reply arrives only once the spinner is preempted, so
    spinning only delayed the worker. The policy must not take that for a success."""
    clock = [0.0]

    def descheduled_poll(timeout: int) -> list:
        clock[0] += 30e-6  # off the CPU for 30 us, within the budget: the reply came meanwhile
        return READY

    monkeypatch.setattr(spin, "perf_counter", lambda: clock[0])
    policy = Spin()
    assert policy.poll(after(1)) == READY and policy.misses == 0  # caught awake
    assert policy.poll(descheduled_poll) == READY  # the reply is still handed over...
    assert policy.misses == 1  # ...but it was not the spin's doing
    policy.poll(descheduled_poll)
    assert policy.budget == 0.0


@pytest.mark.parametrize("polls", [1, 2])
def test_a_reply_at_the_first_polls_is_a_hit(polls):
    policy = Spin()
    policy.misses = 1
    assert policy.poll(after(polls)) == READY
    assert policy.misses == 0

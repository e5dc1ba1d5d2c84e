"""A short, adaptive spin before a reader blocks: for replies that come back within microseconds.

Blocking in ``poll`` puts the thread to sleep, and waking it costs a scheduler round trip, tens of
microseconds on some machines when the worker runs on another core -- more than a small call's
whole work. Polling without a timeout for a few microseconds first catches such a reply awake.

A spin only pays when the other side runs meanwhile, on another core. When both share a core, the
spinner holds the core the reply needs (the scheduler does not preempt it for a task it just
woke), and every spin runs out. So the spin adapts: a miss or two turn it off, and it is tried
again only every ``_PROBE_EVERY`` waits, so a call pays for a failed spin about once in hundreds.
A spin is at most ``MAX_SPIN`` long; an idle reader never spins.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

MAX_SPIN = 50e-6
_MISSES_TO_STOP = 2
_PROBE_EVERY = 256
_ONE_POLL = 4e-6  # generously more than one poll(0) takes awake (about 1 us): more means we were descheduled


class Spin:
    """The spin policy of one reader (one worker's replies: the placement is the worker's)."""

    __slots__ = ("budget", "misses", "countdown")

    def __init__(self) -> None:
        self.budget = MAX_SPIN  # seconds to spin on the next wait; 0 when spinning has stopped paying
        self.misses = 0
        self.countdown = 0  # waits until the next probe, while stopped

    def poll(self, poll: Callable[[int], list[tuple[int, int]]]) -> list[tuple[int, int]]:
        """``poll(0)`` until something is ready or the budget runs out; what was ready (maybe nothing)."""
        budget = self.budget
        if not budget:
            self.countdown -= 1
            if self.countdown > 0:
                return []
            budget = MAX_SPIN  # probe: does spinning pay again (the worker may have moved)?
        start = perf_counter()
        end = start + budget
        polls = 0
        while True:
            ready = poll(0)
            polls += 1
            if ready:
                # Caught awake, or only after the scheduler ran something else (the worker, on
                # this very core) while we spun? That is a miss: blocking would have been better.
                if perf_counter() - start < _ONE_POLL * (polls + 2):
                    self.budget = MAX_SPIN
                    self.misses = 0
                    return ready
                break
            if perf_counter() >= end:
                break
        self.misses += 1
        if self.misses >= _MISSES_TO_STOP:
            self.budget = 0.0
            self.countdown = _PROBE_EVERY
        return ready

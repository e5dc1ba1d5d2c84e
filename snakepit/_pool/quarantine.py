"""Quarantine: a worker slot whose processes keep dying waits longer before its next one.

Each slot (``0..size-1``, kept by a worker's replacements) remembers when its workers died
unexpectedly (crashes and failed starts; not workers the supervisor killed itself). When
``deaths`` of them fall within ``window`` seconds, the slot is quarantined: its next worker
starts only after a back-off, doubling with each quarantine in a row (``BASE`` to ``CAP``
seconds). A slot that goes a whole window without a death starts afresh. The other slots keep
serving meanwhile: a poisoned input or a broken device takes down one slot, not the pool.
"""

from __future__ import annotations

import collections
import time

BASE = 1.0
CAP = 60.0


class Quarantine:
    def __init__(self, deaths: int | None, window: float) -> None:
        self.deaths = deaths
        self.window = window
        self._recent: dict[int, collections.deque[float]] = {}  # slot -> times of its deaths
        self._strikes: dict[int, int] = {}  # slot -> quarantines in a row
        self._until: dict[int, float] = {}  # slot -> monotonic time its quarantine ends

    def died(self, slot: int, now: float | None = None) -> float | None:
        """Record an unexpected death in ``slot``; the quarantine's length if this starts one."""
        if self.deaths is None:
            return None
        now = time.monotonic() if now is None else now
        recent = self._recent.setdefault(slot, collections.deque())
        while recent and now - recent[0] > self.window:
            recent.popleft()
        if not recent and now - self._until.get(slot, now) > self.window:
            self._strikes.pop(slot, None)  # a whole window without a death: start afresh
        recent.append(now)
        if len(recent) < self.deaths:
            return None
        recent.clear()
        strikes = self._strikes[slot] = self._strikes.get(slot, 0) + 1
        delay = min(CAP, BASE * 2 ** (strikes - 1))
        self._until[slot] = now + delay
        return delay

    def snapshot(self, now: float | None = None) -> dict[int, float]:
        """Slots in quarantine now, and the seconds each has left."""
        now = time.monotonic() if now is None else now
        return {slot: round(until - now, 3) for slot, until in list(self._until.items()) if until > now}

"""A worker's life, as the pool sees it: its states and the moves between them.

Whatever runs a worker (a local process, a Ray actor), the pool tracks the same states, and only
the dispatcher moves a worker between them, under its lock, through :func:`move`: the table
below is the whole state machine.
"""

from __future__ import annotations

import enum
from typing import Protocol


class WorkerState(enum.Enum):
    STARTING = "starting"  # launched, not ready yet
    IDLE = "idle"  # ready, nobody's
    BUSY = "busy"  # checked out by a caller (or handed to a waiter)
    DRAINING = "draining"  # a cancelled call is finishing; not available until it acknowledges
    STOPPING = "stopping"  # out of service for good (recycled, shut down)
    DEAD = "dead"  # its process or actor is gone


_S = WorkerState
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    _S.STARTING: frozenset({_S.IDLE, _S.BUSY, _S.DEAD, _S.STOPPING}),  # ready: free, or to a waiter
    _S.IDLE: frozenset({_S.IDLE, _S.BUSY, _S.STOPPING, _S.DEAD}),
    _S.BUSY: frozenset({_S.IDLE, _S.BUSY, _S.DRAINING, _S.STOPPING, _S.DEAD}),  # BUSY: to the next waiter
    _S.DRAINING: frozenset({_S.IDLE, _S.BUSY, _S.STOPPING, _S.DEAD}),
    _S.STOPPING: frozenset({_S.DEAD}),
    _S.DEAD: frozenset(),
}


class _Stateful(Protocol):
    state: WorkerState


def move(worker: _Stateful, to: WorkerState) -> None:
    """Change ``worker``'s state (the dispatcher's lock held); a move the table does not allow
    is a bug in the pool."""
    assert to in TRANSITIONS[worker.state], f"{worker!r}: {worker.state.value} -> {to.value} is not a transition"
    worker.state = to

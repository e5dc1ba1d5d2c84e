"""A worker's life, as the pool sees it: its states and the moves between them.

Whatever runs a worker (a local process, a Ray actor), the pool tracks the same states, and only
the dispatcher moves a worker between them, under its lock, through :func:`move`: the table
below is the whole state machine.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any, Protocol


class WorkerState(enum.Enum):
    STARTING = "starting"  # launched, not ready yet
    IDLE = "idle"  # ready, nobody's
    BUSY = "busy"  # checked out by a caller (or handed to a waiter)
    DRAINING = "draining"  # a cancelled call is finishing; not available until it acknowledges
    STOPPING = "stopping"  # out of service for good (recycled, shut down)
    DEAD = "dead"  # its process or actor is gone

    # Members are singletons compared by identity: hash them the same way, in C (Enum's own
    # __hash__ is Python code, and every call moves a worker twice).
    __hash__ = object.__hash__


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


class Worker:
    """The pool's bookkeeping for one worker, whatever runs it; ``conn`` is the backend's
    connection to it. The dispatcher writes the state, checkout and ownership fields under its
    lock; the supervisor the health ones (``ping``, ``start_error``, ``killed_on_purpose``)."""

    def __init__(self, worker_id: int, conn: Any, slot: int = 0) -> None:
        self.id: int = worker_id
        self.conn: Any = conn
        self.slot: int = slot  # its place 0..size-1, which its replacements take over (see worker_env)
        # A process running several calls at once (threads_per_worker) serves through call slots:
        # one Worker each, in the process's group; the process's own record holds them.
        self.group: int = worker_id  # what a session served here pins to: the process
        self.slots: list[Worker] | None = None  # on a process's record, its call slots
        self.process: Worker | None = None  # on a call slot's record, its process
        self.state = WorkerState.STARTING
        self.started_at: float = time.time()
        self.started_monotonic: float = time.monotonic()
        self.idle_since: float = 0.0  # monotonic time it last became idle
        self.requests_served: int = 0
        self.killed_on_purpose: bool = False  # by the supervisor: its death is no sign of a crash loop
        self.outstanding: list[int] = []  # ids of the calls (or map batches) sent and not answered
        self.current_tool: str | None = None
        self.checked_out: bool = False  # a caller, not the supervisor, owns the connection
        self.session_id: str | None = None  # the session of the call it was given, if any
        self.owner: Callable[[], Any] | None = None  # weak reference to the caller's exchange or map
        # Bumped at each checkout (and when the audit takes a worker back): an owner's release or
        # abandon under an older lease is stale -- the worker has moved on -- and is ignored.
        self.lease: int = 0
        self.start_error: tuple[str, str | None] | None = None  # why it never became ready
        self.retiring: str | None = None  # why it is being recycled, once it is
        self.ping: tuple[int, float] | None = None  # outstanding heartbeat: (seq, sent at)
        self.listening: bool = False  # it sends tools' telemetry (told at launch, then by Listen)

    def __repr__(self) -> str:
        return f"<worker {self.id} pid={self.pid} {self.state.value}>"

    @property
    def pid(self) -> int | None:
        return None if self.conn is None else self.conn.pid

    def begin(self, call_id: int, tool: str) -> None:
        """A call (or a map batch) is about to be sent."""
        self.outstanding.append(call_id)
        self.current_tool = tool

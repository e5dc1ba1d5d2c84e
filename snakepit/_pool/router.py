"""Routing: which worker serves a request, now or when one frees up. Pure logic, no threads.

State: the idle workers (in the order they became idle; those of groups a live session is pinned
to apart), the busy ones, and the waiting tickets.
A ticket waits either for *any* worker or, under ``strict_queue``, for *its* worker. Rules:

* A ticket is served at once when a worker it may use is idle; otherwise it waits (or, under
  ``strict_fail_fast``, is refused with ``worker_busy``). A ticket any worker may serve takes the
  most recently idle worker no session is pinned to, else the most recently idle pinned one
  (with several call slots per process, the longest-idle slot, which spreads calls).
* Invariant: no idle worker is usable by any waiting ticket. So a newcomer that finds an idle
  worker it may use jumps no queue.
* A freed worker goes to the oldest ticket allowed to use it: the older of the head of the *any*
  queue and the head of that worker's strict queue. Both queues are FIFO, so neither kind of
  waiter starves the other.
* A worker that goes away refuses its strict waiters with ``session_worker_unavailable``; a later
  ticket pinned to it is refused the same way under strict modes and served anywhere under hint.
* At most ``max_queue`` tickets wait; one more is refused with ``pool_saturated``.

Workers may come in groups: the call slots of one process that runs several calls at once
(``threads_per_worker``). A session pins to a group, and what the rules above say of "its
worker" holds of the group: it is busy when all its slots are, and gone when all are. A worker
added without a group is a group of its own.

Removal of a waiting ticket (its timeout, its caller cancelled) is O(1): queues are ordered dicts.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from snakepit._errors import Reason
from snakepit._seam.affinity import Affinity

__all__ = ["Router", "Ticket"]

_sequence = itertools.count()


@dataclass(eq=False)
class Ticket:
    """One request for a worker, and what became of it."""

    affinity: Affinity = Affinity.HINT
    pinned: int | None = None  # the session's worker (its group), if the session has one
    seq: int = field(default_factory=lambda: next(_sequence))
    worker: int | None = None  # set when served
    refused: str | None = None  # a Reason when refused
    waiting_for: int | None = None  # the group a strict_queue ticket waits for
    session_id: str | None = None  # not used for routing; lets the caller re-pin its session
    # Set by whoever waits (the pool; routing ignores them): how to wake the caller; a weak
    # reference to what it waits on, dead once the caller has stopped waiting; who takes the
    # worker it is given; the pool's record of that worker and its lease, handed over at release.
    waker: Callable[[], Any] | None = field(default=None, repr=False)
    waiter: Callable[[], Any] | None = field(default=None, repr=False)
    owner: Any = field(default=None, repr=False)
    assigned: Any = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.worker is not None or self.refused is not None

    @property
    def abandoned(self) -> bool:
        """Its caller stopped waiting without withdrawing it (interrupted mid-step)."""
        return self.waiter is not None and self.waiter() is None


class Router:
    def __init__(self, max_queue: int, *, spread: bool = False) -> None:
        self.max_queue = max_queue
        # Idle workers in the order they became idle: those of groups no live session is pinned
        # to, and those of pinned groups (a sessionless call takes these last: their sessions'
        # calls would find them busy). ``spread``: workers are call slots of processes that run
        # several calls at once; take the longest-idle slot, which spreads calls over processes.
        # Else the most recently idle: its caches and its core are warm, the others may sleep.
        self.spread = spread
        self._idle: OrderedDict[int, None] = OrderedDict()
        self._idle_pinned: OrderedDict[int, None] = OrderedDict()
        self._pinned: set[int] = set()  # groups a live session is pinned to
        self._busy: set[int] = set()
        self._any: OrderedDict[Ticket, None] = OrderedDict()
        self._strict: dict[int, OrderedDict[Ticket, None]] = {}  # group -> its strict waiters
        self._group: dict[int, int] = {}  # worker -> its group
        self._members: dict[int, list[int]] = {}  # group -> its workers
        self._waiting = 0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def idle(self) -> int:
        return len(self._idle) + len(self._idle_pinned)

    @property
    def busy(self) -> int:
        return len(self._busy)

    def is_idle(self, worker: int) -> bool:
        return worker in self._idle or worker in self._idle_pinned

    def group(self, worker: int) -> int:
        """The group ``worker`` belongs to (what a session served by it pins to)."""
        return self._group.get(worker, worker)

    def waiters(self) -> Iterator[Ticket]:
        yield from self._any
        for queue in self._strict.values():
            yield from queue

    # -- requests --------------------------------------------------------------------------------

    def acquire(self, ticket: Ticket) -> None:
        """Serve, queue or refuse ``ticket``; see ``ticket.worker``/``refused``/``waiting_for``."""
        pinned = ticket.pinned
        if pinned is not None:
            members = self._members.get(pinned, ())
            for worker in members:
                if worker in self._idle or worker in self._idle_pinned:
                    return self._serve(ticket, worker)
            if not members:  # gone: died or recycled
                if ticket.affinity.strict:
                    ticket.refused = Reason.SESSION_WORKER_UNAVAILABLE
                    return None
            elif ticket.affinity is Affinity.STRICT_FAIL_FAST:
                ticket.refused = Reason.WORKER_BUSY
                return None
            elif ticket.affinity is Affinity.STRICT_QUEUE:
                return self._enqueue(ticket, pinned)
        ticket.worker = self.take_idle()
        if ticket.worker is None:
            self._enqueue(ticket, None)

    def take_idle(self) -> int | None:
        """Serve a request any worker may serve: an idle worker, now busy (see ``spread``; one
        no session is pinned to if there is one); ``None`` if none is idle. (By the invariant,
        no waiter could use an idle worker: none is passed over.) O(1)."""
        idle = self._idle or self._idle_pinned
        if not idle:
            return None
        worker = idle.popitem(last=not self.spread)[0]
        self._busy.add(worker)
        return worker

    def pin(self, group: int, pinned: bool) -> None:
        """A first live session is pinned to ``group`` (or its last one left): its idle workers
        are taken last by sessionless calls (or no longer)."""
        if pinned == (group in self._pinned):
            return
        source, target = (self._idle, self._idle_pinned) if pinned else (self._idle_pinned, self._idle)
        if pinned:
            self._pinned.add(group)
        else:
            self._pinned.discard(group)
        for worker in self._members.get(group, ()):
            if worker in source:
                del source[worker]
                target[worker] = None

    def withdraw(self, ticket: Ticket) -> bool:
        """Stop waiting (timeout or cancellation). False if the ticket is no longer waiting."""
        if ticket.done:
            return False
        worker = ticket.waiting_for
        queue = self._any if worker is None else self._strict.get(worker)
        if queue is None or ticket not in queue:
            return False
        del queue[ticket]
        if worker is not None and not queue:
            del self._strict[worker]
        self._waiting -= 1
        return True

    # -- workers ---------------------------------------------------------------------------------

    def add(self, worker: int, group: int | None = None) -> Ticket | None:
        """A new worker is ready (in ``group``, else a group of its own); it serves the oldest
        waiter, if any, else idles as the least recently used: a replacement takes calls once
        the warm workers are busy (and calls that kill their worker do not all fall on one slot,
        which would be quarantined for it)."""
        self.join(worker, group)
        ticket = self.release(worker)
        if ticket is None:
            self._idle_of(self._group[worker]).move_to_end(worker, last=False)
        return ticket

    def join(self, worker: int, group: int | None = None) -> None:
        """Record ``worker``'s group (before it is first released)."""
        group = worker if group is None else group
        self._group[worker] = group
        self._members.setdefault(group, []).append(worker)

    def release(self, worker: int) -> Ticket | None:
        """``worker`` is free again: hand it to the oldest ticket allowed to use it, else idle it."""
        self._busy.discard(worker)
        group = self._group.get(worker, worker)
        if not self._waiting:
            self._idle_of(group)[worker] = None
            return None
        strict = self._strict.get(group)
        head_any = next(iter(self._any), None)
        head_strict = next(iter(strict), None) if strict else None
        if head_any is None and head_strict is None:
            self._idle_of(group)[worker] = None
            return None
        ticket: Ticket
        if head_strict is None or (head_any is not None and head_any.seq < head_strict.seq):
            assert head_any is not None
            ticket = head_any
            del self._any[ticket]
        else:
            assert strict is not None
            ticket = head_strict
            del strict[ticket]
            if not strict:
                del self._strict[group]
        self._waiting -= 1
        self._busy.add(worker)
        ticket.worker = worker
        return ticket

    def remove(self, worker: int) -> list[Ticket]:
        """``worker`` is gone; returns the strict waiters of its group, refused if it was the
        group's last worker."""
        self._idle.pop(worker, None)
        self._idle_pinned.pop(worker, None)
        self._busy.discard(worker)
        group = self._group.pop(worker, worker)
        members = self._members.get(group)
        if members is not None and worker in members:
            members.remove(worker)
        if members:
            return []
        self._members.pop(group, None)
        self._pinned.discard(group)
        refused = list(self._strict.pop(group, ()))
        for ticket in refused:
            ticket.refused = Reason.SESSION_WORKER_UNAVAILABLE
        self._waiting -= len(refused)
        return refused

    def refuse_all(self, reason: str) -> list[Ticket]:
        """Refuse every waiting ticket (the pool is closing, or no worker can start)."""
        tickets = list(self.waiters())
        for ticket in tickets:
            ticket.refused = reason
        self._any.clear()
        self._strict.clear()
        self._waiting = 0
        return tickets

    # -- internals -------------------------------------------------------------------------------

    def _idle_of(self, group: int) -> OrderedDict[int, None]:
        """Where the idle workers of ``group`` wait: apart while a live session is pinned to it."""
        return self._idle_pinned if group in self._pinned else self._idle

    def _serve(self, ticket: Ticket, worker: int) -> None:
        if self._idle.pop(worker, False) is False:
            del self._idle_pinned[worker]
        self._busy.add(worker)
        ticket.worker = worker

    def _enqueue(self, ticket: Ticket, worker: int | None) -> None:
        if self._waiting >= self.max_queue:
            ticket.refused = Reason.POOL_SATURATED
            return
        ticket.waiting_for = worker
        if worker is None:
            self._any[ticket] = None
        else:
            self._strict.setdefault(worker, OrderedDict())[ticket] = None
        self._waiting += 1

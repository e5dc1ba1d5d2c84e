"""The router and the session store, exhaustively, with no processes or threads.

A hypothesis state machine drives random sequences of checkouts, check-ins, worker deaths,
new workers and waiters giving up, against a plain reference model of the rules, and checks the
invariants after every step: a strict session only ever runs on its pinned worker; no worker
serves two calls; a freed worker goes to the oldest waiter allowed to use it; no waiter is lost;
no worker idles while a waiter could use it.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from snakepit import Affinity, SnakepitError
from snakepit._errors import Reason
from snakepit._pool.router import Router, Ticket
from snakepit._pool.sessions import SessionStore
from snakepit._seam.affinity import parse_affinity

MAX_QUEUE = 4


class RouterModel(RuleBasedStateMachine):
    """Workers come in groups (the call slots of one process); sessions pin to groups."""

    def __init__(self) -> None:
        super().__init__()
        self.router = Router(MAX_QUEUE)
        self.next_id = 1
        self.group: dict[int, int] = {}  # every worker ever added -> its group
        self.alive: set[int] = set()
        self.dead: set[int] = set()
        self.holder: dict[int, Ticket] = {}  # busy worker -> the ticket it serves
        self.waiting: list[Ticket] = []  # in arrival order

    def _members(self, group: int) -> set[int]:
        return {w for w in self.alive if self.group[w] == group}

    # -- rules -------------------------------------------------------------------------------

    @rule(data=st.data())
    def add_worker(self, data: st.DataObject) -> None:
        worker = self.next_id
        self.next_id += 1
        groups = sorted({self.group[w] for w in self.alive})
        # A slot of a process already up (they are added together), or a process of its own.
        group = data.draw(st.sampled_from(groups)) if groups and data.draw(st.booleans()) else worker
        self.group[worker] = group
        self.alive.add(worker)
        served = self.router.add(worker, None if group == worker else group)
        self._check_handoff(worker, served)

    @rule(affinity=st.sampled_from(list(Affinity)), pin=st.sampled_from(["none", "busy", "alive", "dead"]), data=st.data())
    def acquire(self, affinity: Affinity, pin: str, data: st.DataObject) -> None:
        alive_groups = {self.group[w] for w in self.alive}
        pinned = None
        if pin == "busy" and self.holder:  # the interesting case: the session's worker is taken
            pinned = self.group[data.draw(st.sampled_from(sorted(self.holder)))]
        elif pin == "alive" and alive_groups:
            pinned = data.draw(st.sampled_from(sorted(alive_groups)))
        elif pin == "dead":
            dead_groups = sorted({self.group[w] for w in self.dead} - alive_groups)
            if dead_groups:
                pinned = data.draw(st.sampled_from(dead_groups))
        ticket = Ticket(affinity=affinity, pinned=pinned)
        idle_before = self.alive - set(self.holder)
        self.router.acquire(ticket)

        if pinned is not None and pinned not in alive_groups and affinity.strict:
            assert ticket.refused == Reason.SESSION_WORKER_UNAVAILABLE
            return
        if pinned is not None and self._members(pinned) & idle_before:
            assert ticket.worker in self._members(pinned) & idle_before
        elif pinned is not None and pinned in alive_groups and affinity is Affinity.STRICT_FAIL_FAST:
            assert ticket.refused == Reason.WORKER_BUSY
            return
        elif pinned is not None and pinned in alive_groups and affinity is Affinity.STRICT_QUEUE:
            assert ticket.worker is None
            self._expect_queued(ticket, waiting_for=pinned)
            return
        elif idle_before:
            assert ticket.worker in idle_before
        else:
            self._expect_queued(ticket, waiting_for=None)
            return
        assert ticket.worker not in self.holder
        assert self.router.group(ticket.worker) == self.group[ticket.worker]
        self.holder[ticket.worker] = ticket

    @precondition(lambda self: self.holder)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.holder)))
        del self.holder[worker]
        self._check_handoff(worker, self.router.release(worker))

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.alive)))
        group = self.group[worker]
        self.alive.discard(worker)
        self.dead.add(worker)
        self.holder.pop(worker, None)
        refused = self.router.remove(worker)
        last = not self._members(group)
        expected = [t for t in self.waiting if t.waiting_for == group] if last else []
        assert refused == expected, "strict waiters are refused when their group's last worker goes"
        assert all(t.refused == Reason.SESSION_WORKER_UNAVAILABLE for t in refused)
        self.waiting = [t for t in self.waiting if t not in refused]

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def waiter_gives_up(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.waiting))
        assert self.router.withdraw(ticket)
        assert not self.router.withdraw(ticket)
        self.waiting.remove(ticket)

    # -- helpers -----------------------------------------------------------------------------

    def _expect_queued(self, ticket: Ticket, waiting_for: int | None) -> None:
        if len(self.waiting) >= MAX_QUEUE:
            assert ticket.refused == Reason.POOL_SATURATED
            return
        assert not ticket.done and ticket.waiting_for == waiting_for
        self.waiting.append(ticket)

    def _check_handoff(self, worker: int, served: Ticket | None) -> None:
        eligible = [t for t in self.waiting if t.waiting_for in (None, self.group[worker])]
        if not eligible:
            assert served is None
            return
        oldest = min(eligible, key=lambda t: t.seq)
        assert served is oldest, "a freed worker goes to the oldest waiter allowed to use it"
        assert served.worker == worker
        self.waiting.remove(served)
        self.holder[worker] = served

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def bookkeeping_matches(self) -> None:
        assert self.router.waiting == len(self.waiting)
        assert set(self.router.waiters()) == set(self.waiting)  # no waiter lost
        assert self.router.busy == len(self.holder) and self.router.idle == len(self.alive) - len(self.holder)
        assert len({id(t) for t in self.holder.values()}) == len(self.holder)  # one call per worker

    @invariant()
    def strict_calls_run_only_in_their_pinned_group(self) -> None:
        for worker, ticket in self.holder.items():
            if ticket.affinity.strict and ticket.pinned is not None:
                assert self.group[worker] == ticket.pinned

    @invariant()
    def no_idle_worker_that_a_waiter_could_use(self) -> None:
        idle = self.alive - set(self.holder)
        for ticket in self.waiting:
            if ticket.waiting_for is None:
                assert not idle
            else:
                assert not self._members(ticket.waiting_for) & idle


RouterModel.TestCase.settings = settings(max_examples=400, stateful_step_count=40, deadline=None)
test_router_state_machine = RouterModel.TestCase


def test_freed_workers_go_to_the_oldest_eligible_waiter():
    router = Router(100)
    router.add(1)
    router.add(2)
    router.acquire(Ticket())
    router.acquire(Ticket())  # both workers busy
    u1 = Ticket()
    s1 = Ticket(affinity=Affinity.STRICT_QUEUE, pinned=1)
    s2 = Ticket(affinity=Affinity.STRICT_QUEUE, pinned=1)
    u2 = Ticket()
    for ticket in (u1, s1, s2, u2):
        router.acquire(ticket)
        assert not ticket.done
    assert router.release(1) is u1  # older than the strict waiters for worker 1
    assert router.release(2) is u2  # strict waiters for worker 1 may not use worker 2
    assert router.release(1) is s1
    assert router.release(1) is s2
    assert router.release(1) is None and router.release(2) is None and router.idle == 2


def test_parse_affinity():
    assert parse_affinity("strict_queue") is Affinity.STRICT_QUEUE
    assert Affinity.HINT == "hint" and Affinity.STRICT_FAIL_FAST == "strict_fail_fast"
    with pytest.raises(SnakepitError) as info:
        parse_affinity("sticky")
    assert (info.value.category, info.value.reason) == ("validation", "invalid_arguments")


# -- sessions -------------------------------------------------------------------------------------


def test_sessions_expire_after_ttl_of_inactivity_in_lru_order():
    store = SessionStore(ttl=10, max_sessions=100)
    store.open("a", now=0)
    store.open("b", now=5)
    store.open("a", now=8)  # used again: now the most recent
    assert store.next_expiry() == 15  # b, unused since 5
    assert store.sweep(now=14.9) == 0
    assert store.sweep(now=15) == 1 and "b" not in store and "a" in store
    assert store.sweep(now=18) == 1 and len(store) == 0 and store.next_expiry() is None


def test_session_quota():
    store = SessionStore(ttl=10, max_sessions=2)
    store.open("a", 0)
    store.open("b", 0)
    store.open("a", 1)  # existing sessions are not new
    with pytest.raises(SnakepitError) as info:
        store.open("c", 1)
    assert (info.value.category, info.value.reason) == ("pool", "session_quota_exceeded")
    store.close("a")
    store.open("c", 1)
    assert store.open("d", 20).id == "d"  # expired ones make room


def test_session_affinity_sticks_once_given():
    store = SessionStore(ttl=10, max_sessions=10)
    assert store.open("s", 0).affinity is None
    assert store.open("s", 1, Affinity.STRICT_QUEUE).affinity is Affinity.STRICT_QUEUE
    assert store.open("s", 2).affinity is Affinity.STRICT_QUEUE


def test_a_sessionless_call_takes_the_most_recently_idle_worker():
    router = Router(100)
    for worker in (1, 2, 3):
        router.add(worker)  # a new worker idles as the least recently used
    assert router.take_idle() == 1
    assert router.take_idle() == 2
    router.release(1)
    router.release(2)
    assert router.take_idle() == 2  # the last one to become idle: its caches and core are warm
    router.release(2)
    assert router.take_idle() == 2
    router.add(4)  # a replacement waits behind the warm ones
    assert [router.take_idle(), router.take_idle(), router.take_idle()] == [1, 3, 4]


def test_workers_a_session_is_pinned_to_are_taken_last():
    router = Router(100)
    for worker in (3, 2, 1):
        router.add(worker)  # idle, most recent first: 3, 2, 1
    router.pin(3, True)
    assert [router.take_idle(), router.take_idle()] == [2, 1]
    assert router.take_idle() == 3  # no unpinned one left: a pinned one rather than a wait
    router.release(3)
    router.release(2)
    assert router.take_idle() == 2
    router.pin(3, False)
    router.release(2)
    assert router.take_idle() == 2 and router.take_idle() == 3
    assert router.idle == 0 and router.busy == 3


def test_with_several_call_slots_per_process_the_longest_idle_slot_spreads_calls():
    router = Router(100, spread=True)
    for slot, process in ((1, 1), (2, 1), (3, 3), (4, 3)):
        router.add(slot, process)
    first = router.take_idle()
    router.release(first)  # the longest-idle slot is taken, not the one just freed
    assert router.take_idle() != first


def test_the_store_tells_when_a_group_gains_its_first_pin_and_loses_its_last():
    told: list[tuple[int, bool]] = []
    store = SessionStore(10.0, 100)
    store.on_pinned = lambda group, pinned: told.append((group, pinned))
    a, b = store.open("a", 0.0), store.open("b", 0.0)
    store.pin(a, 7)
    store.pin(b, 7)
    store.pin(a, 7)  # pinned there already: nothing to say
    assert told == [(7, True)]
    store.pin(b, 8)  # re-pinned elsewhere
    store.close("a")
    assert told == [(7, True), (8, True), (7, False)]
    assert store.sweep(100.0) == 1 and told[-1] == (8, False)  # expired: its pin goes with it

"""The dispatcher and the exchange against an in-memory connection: no processes, no pipes.

These are the edge cases of the pool's state machine that are hard to reach with real workers
at the right instant: a death with answers still queued, a stale lease, a waiter handed a worker
on release, a strict session whose worker died, a move the state table forbids. The fake is a
test double of a *backend's* connection (the seam in snakepit/_backends/base.py), not of the pool:
the dispatcher and exchange under test are the real ones.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from snakepit import SnakepitError
from snakepit._observe import Observer
from snakepit._pool.dispatcher import Counters, Dispatcher
from snakepit._pool.exchange import END, Exchange, run_execute
from snakepit._pool.mapping import MapEngine, arun_map
from snakepit._pool.recycling import RecyclePolicy
from snakepit._pool.sessions import SessionStore
from snakepit._protocol import BatchResult, Cancel, Chunk, End, Failure, FrameReader, Result, ToWorker
from snakepit._seam.affinity import Affinity
from snakepit._seam.backend import DeadlineExceeded, PoolClosing, WorkerGone
from snakepit._seam.workers import TRANSITIONS, Worker, WorkerState, move


class MemoryConnection:
    """A worker's connection whose messages the test scripts: ``replies`` is what ``take`` and
    ``receive`` deliver next; ``dies`` makes the worker end once they are delivered."""

    def __init__(self, pid: int = 4242) -> None:
        self.pid = pid
        self.node = None
        self.node_id = None
        self.closing = SimpleNamespace(is_set=False)  # the pool's closing signal, as far as the calls see it
        self.exit_info: dict[str, Any] | None = None
        self.broken = False
        self.sent: list[Any] = []
        self.controls: list[Any] = []
        self.replies: list[Any] = []
        self.salvaged: list[Any] = []
        self.dies = False
        self.killed = False

    def fits(self, size: int) -> bool:
        return True

    def spin(self) -> bool:
        return False

    def memory(self) -> int | None:
        return None

    def send(self, frame: Any, deadline: float | None = None, attachments: Any = None) -> None:
        if self.exit_info is not None:
            raise WorkerGone()
        self.sent.append(frame)

    def send_control(self, message: Any) -> bool:
        self.controls.append(message)
        return self.exit_info is None

    def take(self, exited: bool = False) -> list[Any]:
        messages, self.replies = self.replies, []
        if not messages and (self.dies or exited):
            raise WorkerGone()
        return messages

    def receive(self, deadline: float | None) -> list[Any]:
        messages = self.take()
        if not messages and self.closing.is_set:
            raise PoolClosing()
        if not messages:
            raise DeadlineExceeded()  # nothing scripted: as if the deadline passed
        return messages

    def watch(self, loop: Any, callback: Callable[[bool], None]) -> Callable[[], None]:
        return lambda: None

    def exit_status(self) -> dict[str, Any]:
        if self.exit_info is None:
            self.exit_info = {"exit_code": -9, "signal": "SIGKILL"}
        return self.exit_info

    def salvage(self) -> list[Any]:
        messages, self.salvaged = self.salvaged, []
        return messages

    def kill(self) -> None:
        self.killed = True
        self.dies = True


class RecordingSupervision:
    """Runs what the dispatcher hands the supervisor's thread at once, and records it."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.log: list[tuple[str, int]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        pass

    def dispose(self, handle: Worker) -> None:
        self.log.append(("dispose", handle.id))

    def retire(self, handle: Worker) -> None:
        self.log.append(("retire", handle.id))

    def scrap(self, handle: Worker) -> None:
        self.log.append(("scrap", handle.id))

    def drain(self, handle: Worker, call_id: int) -> None:
        self.log.append(("drain", handle.id))

    def lost(self, handle: Worker) -> None:
        self.log.append(("lost", handle.id))


@pytest.fixture
def pool_core():
    dispatcher = Dispatcher(10, Counters(), SessionStore(3600.0, 100), Affinity.HINT, RecyclePolicy(), Observer(None))
    supervision = RecordingSupervision(dispatcher)
    dispatcher.supervisor = supervision
    dispatcher.open()
    workers = []
    for worker_id in (1, 2):
        worker = Worker(worker_id, MemoryConnection(pid=1000 + worker_id))
        dispatcher.add_worker(worker)
        workers.append(worker)
    yield dispatcher, supervision, workers
    dispatcher.close()


def begin(dispatcher: Dispatcher, tool: str = "t", session_id: str | None = None, affinity: Affinity | None = None) -> Exchange:
    exchange = Exchange(dispatcher, tool, None)
    dispatcher.checkout(session_id, affinity, None, None, exchange)
    exchange.send(bytearray(b"call"), next(dispatcher.call_ids))
    return exchange


def test_a_result_releases_the_worker_once(pool_core):
    dispatcher, _, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    assert worker.state is WorkerState.BUSY and worker.checked_out and worker.outstanding == [exchange.call_id]
    worker.conn.replies = [Result(exchange.call_id, 42)]
    assert run_execute(exchange) == 42
    assert worker.state is WorkerState.IDLE and not worker.checked_out and worker.requests_served == 1
    exchange.cancel()  # after the end: nothing more happens
    assert worker.state is WorkerState.IDLE and worker.conn.controls == []


def test_answers_to_other_calls_are_skipped(pool_core):
    dispatcher, _, _ = pool_core
    exchange = begin(dispatcher)
    exchange.handle.conn.replies = [Result(exchange.call_id - 1, "stale"), Result(exchange.call_id, "mine")]
    assert run_execute(exchange) == "mine"


def test_a_tool_failure_is_raised_and_the_worker_is_clean(pool_core):
    dispatcher, _, _ = pool_core
    exchange = begin(dispatcher)
    exchange.handle.conn.replies = [Failure(exchange.call_id, "python_error", "tool_exception", "boom", {"type": "ValueError"})]
    with pytest.raises(SnakepitError) as info:
        run_execute(exchange)
    assert (info.value.category, info.value.reason) == ("python_error", "tool_exception")
    assert exchange.handle.state is WorkerState.IDLE


def test_cancelling_a_running_call_drains_the_worker_then_frees_it(pool_core):
    dispatcher, supervision, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    exchange.cancel()
    assert worker.conn.controls == [Cancel([exchange.call_id])]
    assert worker.state is WorkerState.DRAINING and ("drain", worker.id) in supervision.log
    dispatcher.drained(worker)  # the supervisor saw the call's End
    assert worker.state is WorkerState.IDLE and worker.outstanding == []


def test_a_cancel_after_the_answer_arrived_releases_without_draining(pool_core):
    dispatcher, supervision, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    exchange.feed([Chunk(exchange.call_id, 1), End(exchange.call_id)])
    assert exchange.next_batch() == [1]
    exchange.cancel()  # the End is already here: the worker is clean
    assert worker.state is WorkerState.IDLE and worker.conn.controls == [] and supervision.log == []


def test_a_death_delivers_what_was_salvaged_before_the_crash(pool_core):
    dispatcher, _supervision, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    worker.conn.dies = True
    worker.conn.salvaged = [Result(exchange.call_id, "saved")]
    assert run_execute(exchange) == "saved"  # the answer was written before it died


def test_a_death_with_nothing_salvaged_is_worker_crashed_with_its_exit(pool_core):
    dispatcher, supervision, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    worker.conn.dies = True
    with pytest.raises(SnakepitError) as info:
        run_execute(exchange)
    assert (info.value.category, info.value.reason) == ("worker", "worker_crashed")
    assert info.value.details["signal"] == "SIGKILL"
    assert worker.state is WorkerState.DEAD and worker.id not in dispatcher.workers
    assert ("lost", worker.id) in supervision.log and ("dispose", worker.id) in supervision.log


def test_a_waiter_is_handed_the_worker_on_release(pool_core):
    dispatcher, _, (_first, _second) = pool_core
    holders = [begin(dispatcher), begin(dispatcher)]  # both workers busy
    got: list[Worker] = []
    waiter = threading.Thread(target=lambda: got.append(dispatcher.checkout(None, None, None, None)))
    waiter.start()
    try:
        for _ in range(500):
            if dispatcher.router.waiting:
                break
            threading.Event().wait(0.01)
        assert dispatcher.router.waiting == 1
        holder = holders[0]
        holder.handle.conn.replies = [Result(holder.call_id, None)]
        run_execute(holder)
        waiter.join(10)
    finally:
        waiter.join(10)
    assert got == [holder.handle] and holder.handle.state is WorkerState.BUSY  # BUSY -> BUSY, never idle


def test_a_stale_lease_cannot_release_a_worker_someone_else_holds(pool_core):
    dispatcher, _, _ = pool_core
    exchange = begin(dispatcher)
    worker, old_lease = exchange.handle, exchange.lease
    worker.conn.replies = [Result(exchange.call_id, 1)]
    run_execute(exchange)
    again = begin(dispatcher, session_id=None)
    if again.handle is not worker:  # make sure the same worker is taken again
        again.handle.conn.replies = [Result(again.call_id, 1)]
        run_execute(again)
        again = begin(dispatcher)
    assert again.handle is worker and worker.lease != old_lease
    dispatcher.release(worker, old_lease)  # the first call's late release
    assert worker.state is WorkerState.BUSY and worker.checked_out


def test_a_strict_session_whose_worker_died_is_told_once(pool_core):
    dispatcher, _, _ = pool_core
    dispatcher.open_session("s", Affinity.STRICT_QUEUE)
    exchange = begin(dispatcher, session_id="s")
    pinned = exchange.handle
    pinned.conn.dies = True
    with pytest.raises(SnakepitError):
        run_execute(exchange)
    with pytest.raises(SnakepitError) as info:
        dispatcher.checkout("s", None, None, None)
    assert info.value.reason == "session_worker_unavailable"
    replacement = dispatcher.checkout("s", None, None, None)  # it starts afresh on another worker
    assert replacement is not pinned


def test_an_orphaned_checkout_is_taken_back_by_the_audit(pool_core):
    dispatcher, _, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    del exchange  # dropped unfinished: its __del__ hands the cancel over
    gc.collect()
    assert worker.state is WorkerState.DRAINING  # cancelled in the worker, being drained
    dispatcher.drained(worker)
    assert worker.state is WorkerState.IDLE

    holder = Exchange(dispatcher, "t", None)
    dispatcher.checkout(None, None, None, None, holder)
    worker = holder.handle
    worker.owner = lambda: None  # the owner was collected without giving it back (never sent)
    assert dispatcher.audit() == [] and worker.state is WorkerState.IDLE


def test_a_call_waiting_when_the_pool_closes_gets_pool_closed_and_gives_its_worker_up(pool_core):
    """The shutdown cancels and stops the worker: the caller neither drains it nor waits."""
    dispatcher, supervision, _ = pool_core
    exchange, late = begin(dispatcher), begin(dispatcher)
    worker, other = exchange.handle, late.handle
    dispatcher.close()
    for held in (worker, other):
        held.conn.closing.is_set = True
    with pytest.raises(SnakepitError) as info:
        run_execute(exchange)
    assert info.value.reason == "pool_closed"
    assert not worker.checked_out and worker.owner is None and worker.state is WorkerState.BUSY  # not freed, not drained
    assert worker.conn.controls == [] and supervision.log == []
    # a caller that wakes after the shutdown has passed its worker by: it is disposed of then
    dispatcher.worker_died(other)
    with pytest.raises(SnakepitError) as info:
        run_execute(late)
    assert info.value.reason == "pool_closed" and supervision.log == [("dispose", other.id)]


def test_a_broken_connection_gets_the_worker_scrapped_not_reused(pool_core):
    dispatcher, supervision, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    worker.conn.broken = True
    exchange.cancel()
    assert ("scrap", worker.id) in supervision.log and worker.state is not WorkerState.IDLE


def test_streams_deliver_runs_of_chunks_then_end(pool_core):
    dispatcher, _, _ = pool_core
    exchange = begin(dispatcher)
    exchange.feed(
        [
            Chunk(exchange.call_id, 1),
            Chunk(exchange.call_id, 2),
            Chunk(exchange.call_id, 3, True, {"k": "v"}),
            End(exchange.call_id),
        ]
    )
    assert exchange.next_batch() == [1, 2, 3]
    assert exchange.next_batch() is END and exchange.result.chunks == 3 and exchange.result.metadata == {"k": "v"}
    assert exchange.result.synthetic_final is False and exchange.handle.state is WorkerState.IDLE


def test_the_state_table_refuses_moves_it_does_not_list():
    worker = Worker(9, MemoryConnection())
    for state in WorkerState:
        assert state in TRANSITIONS  # every state has its row
    move(worker, WorkerState.IDLE)
    move(worker, WorkerState.BUSY)
    move(worker, WorkerState.DEAD)
    with pytest.raises(AssertionError):
        move(worker, WorkerState.IDLE)  # the dead stay dead


# -- a process serving through call slots (threads_per_worker) --------------------------------------


def _threaded_pool(recycle: RecyclePolicy | None = None) -> tuple[Dispatcher, RecordingSupervision, Worker]:
    recycle = recycle or RecyclePolicy()
    dispatcher = Dispatcher(10, Counters(), SessionStore(3600.0, 100), Affinity.HINT, recycle, Observer(None))
    supervision = RecordingSupervision(dispatcher)
    dispatcher.supervisor = supervision
    dispatcher.open()
    process = Worker(1, MemoryConnection(pid=1001))
    process.slots = []
    for slot_id in (11, 12):
        slot = Worker(slot_id, MemoryConnection(pid=1001))
        slot.group, slot.process = process.id, process
        process.slots.append(slot)
    dispatcher.add_worker(process)
    return dispatcher, supervision, process


def test_a_process_serves_through_its_slots_and_a_session_pins_to_the_process():
    dispatcher, _, process = _threaded_pool()
    assert process.state is WorkerState.IDLE and set(dispatcher.workers) == {11, 12}
    dispatcher.open_session("s", Affinity.STRICT_FAIL_FAST)
    first = begin(dispatcher, session_id="s")
    second = begin(dispatcher, session_id="s")  # the other thread of the same process
    assert {first.handle.id, second.handle.id} == {11, 12} and dispatcher.session_worker("s") == process.id
    with pytest.raises(SnakepitError) as busy:
        dispatcher.checkout("s", None, None, None)
    assert busy.value.reason == "worker_busy"
    stats = dispatcher.snapshot()
    assert (stats["workers"], stats["busy"], stats["worker_info"][0]["busy_threads"]) == (1, 2, 2)


def test_a_process_dies_with_all_its_slots_and_its_strict_waiters_are_told():
    dispatcher, _, process = _threaded_pool()
    dispatcher.open_session("s", Affinity.STRICT_QUEUE)
    holders = [begin(dispatcher, session_id="s"), begin(dispatcher, session_id="s")]
    refused: list[BaseException] = []

    def wait() -> None:
        try:
            dispatcher.checkout("s", None, None, None)
        except SnakepitError as exc:
            refused.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    for _ in range(500):
        if dispatcher.router.waiting:
            break
        threading.Event().wait(0.01)
    assert dispatcher.worker_died(process) and not dispatcher.worker_died(process)
    waiter.join(10)
    assert [e.reason for e in refused] == ["session_worker_unavailable"]
    assert all(h.handle.state is WorkerState.DEAD for h in holders) and not dispatcher.workers


def test_a_slot_whose_caller_sees_its_process_die_takes_the_whole_process_out_at_once():
    """The caller reports the death before the supervisor has heard of it: the next call must
    not be given another thread of the dead process."""
    dispatcher, supervision, process = _threaded_pool()
    crashed = begin(dispatcher)
    crashed.handle.conn.dies = True
    crashed.handle.conn.exit_info = {"exit_code": -9, "signal": "SIGKILL"}
    with pytest.raises(SnakepitError) as info:
        run_execute(crashed)
    assert info.value.reason == "worker_crashed"
    assert process.state is WorkerState.DEAD and not dispatcher.workers  # its other thread too
    assert ("lost", process.id) in supervision.log
    with pytest.raises(SnakepitError):  # no worker left: the next call waits, it is not sent to the dead process
        dispatcher.checkout(None, None, time.monotonic() + 0.05, None)


def test_recycling_parks_idle_slots_and_retires_the_process_when_its_last_busy_slot_is_done():
    dispatcher, supervision, process = _threaded_pool(RecyclePolicy(max_requests=2))
    busy = begin(dispatcher)
    done = begin(dispatcher)
    done.handle.conn.replies = [Result(done.call_id, 1)]
    run_execute(done)  # one served: not due yet
    assert done.handle.state is WorkerState.IDLE
    again = begin(dispatcher)
    assert again.handle is done.handle
    again.handle.conn.replies = [Result(again.call_id, 1)]
    run_execute(again)  # two served: the process is due; this slot parks, the busy one serves on
    assert again.handle.state is WorkerState.STOPPING and busy.handle.state is WorkerState.BUSY
    assert process.state is WorkerState.IDLE and ("retire", process.id) not in supervision.log
    busy.handle.conn.replies = [Result(busy.call_id, 1)]
    run_execute(busy)
    assert busy.handle.state is WorkerState.STOPPING and process.state is WorkerState.STOPPING
    assert supervision.log[-1] == ("retire", process.id)
    assert dispatcher.retire_if_idle(process, "max_requests") is False  # nothing left to retire


def test_a_worker_its_caller_ends_is_out_of_service_at_once_whatever_interrupts_the_caller(pool_core):
    # A Ctrl-C cut a call's write, the caller ended the worker, and a second Ctrl-C skipped the
    # rest of its steps: the worker gives up its call (abandon), and a drain then finds the answer
    # it wrote before it died. It must not be handed to anyone again.
    dispatcher, supervision, _ = pool_core
    exchange = begin(dispatcher)
    worker = exchange.handle
    dispatcher.end(worker, on_purpose=True)
    assert worker.conn.killed and worker.state is WorkerState.DEAD and ("lost", worker.id) in supervision.log
    dispatcher.abandon(worker, exchange.call_id, exchange.lease)
    dispatcher.drained(worker)
    assert worker.state is WorkerState.DEAD and ("dispose", worker.id) in supervision.log
    assert begin(dispatcher).handle is not worker  # the next caller gets the other worker


@pytest.mark.parametrize("waiter_then", ["settles", "is_interrupted"])
def test_a_worker_that_dies_between_its_assignment_and_its_claim_is_disposed_of(pool_core, waiter_then):
    """A released worker is checked out to the oldest waiter before the waiter wakes to take it:
    killed in between, it must not stay checked out to nobody (its connection would never be
    disposed of, its descriptors open until a garbage collection)."""
    dispatcher, supervision, _ = pool_core
    running, _busy = begin(dispatcher), begin(dispatcher)  # both workers busy
    handle, ticket, _ = dispatcher.request(None, None, lambda ticket: "parked", Exchange(dispatcher, "t", None))
    assert handle is None
    running.handle.conn.replies = [Result(running.call_id, 1)]
    run_execute(running)  # released: checked out to the waiting ticket at once
    assigned = running.handle
    assert ticket.worker == assigned.id and assigned.checked_out
    assigned.conn.exit_info = {"exit_code": -9, "signal": "SIGKILL"}  # reaped by the supervisor
    dispatcher.worker_died(assigned)  # killed before the waiter took it
    if waiter_then == "settles":
        handle, parked = dispatcher.settle(ticket, None, None, lambda ticket: "parked")
        assert (handle, parked) == (None, "parked")  # it waits again: the other worker is busy
    else:
        dispatcher.forsake(ticket)
    assert not assigned.checked_out and assigned.owner is None
    assert supervision.log == [("dispose", assigned.id)]


class AnsweringConnection(MemoryConnection):
    """A worker that answers each map batch it is sent: every item's ``x``, doubled."""

    def send(self, frame: Any, deadline: float | None = None, attachments: Any = None) -> None:
        super().send(frame, deadline, attachments)
        [batch] = FrameReader(ToWorker).feed(bytes(frame))
        items = msgspec.msgpack.decode(batch.items)
        self.replies.append(BatchResult(batch.id, [item["x"] * 2 for item in items], []))

    def watch(self, loop: Any, callback: Callable[[bool], None]) -> Callable[[], None]:
        if self.replies:
            loop.call_soon(callback, False)
        return lambda: None


def test_an_async_map_whose_workers_all_died_under_its_sends_asks_for_another(pool_core):
    """An idempotent tool's items run again one by one after their worker dies. When the map
    finds every worker it holds dead as it sends to them, its items are in flight on no
    worker: the asyncio driver must ask for a worker again (as the synchronous one does), not
    wait on nothing forever."""
    dispatcher, _, (dead, _) = pool_core
    dead.conn.exit_info = {"exit_code": -9, "signal": "SIGKILL"}  # killed while idle: sends fail
    alive = Worker(3, AnsweringConnection(pid=1003))
    dispatcher.add_worker(alive)
    engine = MapEngine(
        dispatcher, "t", [{"x": i} for i in range(3)], ordered=True, chunksize=3, timeout=None, on_progress=None, retries=1
    )
    workers = iter([dead, alive])

    async def first() -> Worker:
        handle = next(workers)
        with dispatcher.lock:
            dispatcher._assign(handle, engine)
        return handle

    async def collect() -> list:
        return [value async for value in arun_map(engine, first, lambda: None, return_exceptions=False)]

    assert asyncio.run(asyncio.wait_for(collect(), 10)) == [0, 2, 4]
    assert dead.state is WorkerState.DEAD and alive.state is WorkerState.IDLE

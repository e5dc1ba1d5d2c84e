"""``pool.map``: many calls of one tool, batched and pipelined over the workers it holds.

A round trip per item would cap tiny tasks at the IPC latency, so items travel in ``Batch``
messages (one call per item in the worker, one result or error per item back) and every held
worker has up to ``_DEPTH`` batches queued: while it runs one, the next is already in its pipe.
Unless ``chunksize`` is given, batches are sized from the measured service rate so that each
takes about ``_TARGET_SECONDS`` of worker time: one item at first, up to ``_MAX_BATCH``.

Input is read lazily and at most ``_AHEAD`` items are in flight or waiting to be yielded, so an
endless generator of arguments maps in bounded memory. Results come in input order (``ordered``)
or as they complete. A failing item raises its error at its position, or is yielded as the
error with ``return_exceptions=True``; a worker that dies fails only the items it held, or, for
an idempotent tool, has them run again one by one (each its own batch, so that an item that
kills its worker again fails alone) up to ``retries`` times.

When the pool drains (``close(wait=True)``) a map reads no more of its input: the items it has
read run (the batches sent, one read but not yet sent, items running again after their worker
died), their results are yielded, each worker is handed back once it has nothing left to run,
and the driver's next request for a worker raises ``pool_closed`` for the rest of the input.

:class:`MapEngine` is the sans-IO core shared by the sync and async drivers; they differ only in
how they wait for a worker's pipe.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import msgspec
from msgspec.msgpack import Ext

from snakepit import _errors as errors
from snakepit import _protocol as protocol
from snakepit._errors import Reason
from snakepit._pool.dispatcher import Dispatcher
from snakepit._protocol import Batch, BatchResult, Cancel, Failure, decode_value
from snakepit._remote import tool_error
from snakepit._seam.backend import DeadlineExceeded, WorkerGone
from snakepit._seam.timing import deadline_after, seconds
from snakepit._seam.workers import Worker

_DEPTH = 2
_TARGET_SECONDS = 0.005
_MAX_BATCH = 2048
_AHEAD = 32768
_ENVELOPE = 64  # a Batch frame's bytes around its items and tool name, at most


_NONE_REFUSED: dict[int, errors.SnakepitError] = {}


class _InFlight:
    __slots__ = ("call_id", "start", "count", "sent", "deadline", "refused", "items", "attempt")

    def __init__(
        self,
        call_id: int,
        start: int,
        count: int,
        sent: float,
        deadline: float | None,
        refused: dict[int, errors.SnakepitError],
        items: bytes | None = None,
        attempt: int = 0,
    ) -> None:
        self.call_id = call_id
        self.start = start
        self.count = count
        self.sent = sent
        self.deadline = deadline
        self.refused = refused  # items whose arguments could not travel: {offset: error}
        self.items = items  # the encoded items, kept only while they may have to run again
        self.attempt = attempt  # how many times these items have run again


class MapEngine:
    def __init__(
        self,
        dispatcher: Dispatcher,
        tool: str,
        iterable: Iterable[Any],
        *,
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        on_progress: Callable[[int], None] | None,
        on_items: Callable[[int], None] | None = None,
        on_timeout: Callable[[int, int], None] | None = None,
        on_close: Callable[[MapEngine], None] | None = None,
        retries: int = 0,
        on_retry: Callable[[Worker, int, dict[str, Any]], None] | None = None,
        context: Any = None,
        meter: Any = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._meter = meter  # the pool's CallMeter while its metrics are enabled: items and batch times
        self.context = context  # the map's CallContext: its correlation id and trace span
        self._trace = None if context is None or context.span is None else context.span.traceparent
        self._retries = retries
        self._on_retry = on_retry
        self._again: deque[tuple[int, bytes, int]] = deque()  # items to run again: (index, encoded, attempt)
        self.tool = tool
        self._items = iter(iterable)
        self._exhausted = False
        self._ordered = ordered
        self._chunksize = chunksize
        self._timeout = timeout
        self._on_progress = on_progress
        self._on_close = on_close
        self._on_items = on_items
        self._on_timeout = on_timeout
        self.workers: dict[int, Worker] = {}
        self._leases: dict[int, int] = {}  # worker id -> the lease it was given under
        self._queued: dict[int, deque[_InFlight]] = {}  # worker id -> its batches, oldest first
        self._last_done: dict[int, float] = {}
        self._next_index = 0
        self._held: tuple[int, int, bytes, dict[int, errors.SnakepitError], int] | None = None  # see _send
        # Completed batches: (values, {offset: error}); by first index when ordered.
        self._by_start: dict[int, tuple[int, list[Any], dict[int, errors.SnakepitError]]] = {}
        self._completed: deque[tuple[int, list[Any], dict[int, errors.SnakepitError]]] = deque()
        self._buffered = 0
        self._next_yield = 0
        self._in_flight = 0
        self._rate: float | None = None  # items per second of worker time
        self.done = 0
        self.failed = 0
        # The asyncio driver's: write a frame the worker's pipe cannot hold at once somewhere
        # that may block (a thread), then report back through written(). Meanwhile that worker
        # gets nothing more. Without it (the thread driver) such a write blocks the caller.
        self.offload: Callable[[Worker, bytes | bytearray, _InFlight], None] | None = None
        self._writing: set[int] = set()  # workers with an offloaded write under way
        self.caller: object = None  # the thread (its ident) or task iterating the map: see Dispatcher.holds

    @property
    def correlation_id(self) -> str | None:
        return None if self.context is None else self.context.correlation_id

    # -- workers -----------------------------------------------------------------------------------

    def add_worker(self, handle: Worker) -> None:
        if not self.workers and not self._queued and self.context is not None and self.context.span is not None:
            self.context.span.running(handle.id)  # the first worker: the queue wait is over
        if handle.id not in self.workers:
            self._queued[handle.id] = deque()
            self.workers[handle.id] = handle

    # Owner (see dispatcher.py): a worker is the map's from the moment it is assigned; whatever
    # interrupts the map after that, close() gives it back.
    def adopt(self, handle: Worker, lease: int) -> None:
        self._leases[handle.id] = lease
        self.add_worker(handle)

    def disown(self, handle: Worker) -> bool:
        if self._queued.get(handle.id):
            return False
        self.workers.pop(handle.id, None)
        self._queued.pop(handle.id, None)
        return True

    def fill(self) -> list[Worker]:
        """Send batches to workers with room; returns the workers no longer needed."""
        idle = []
        for handle in list(self.workers.values()):
            if handle.id not in self.workers:  # lost meanwhile, with a sibling call slot
                continue
            queue = self._queued[handle.id]
            # A held batch, and items to run again, are already read (and counted): they go out
            # even with the look-ahead full (which may be waiting for them).
            while (
                handle.id in self.workers  # not lost while sending
                and handle.id not in self._writing
                and len(queue) < (_DEPTH if handle.process is None else 1)  # a call slot runs one at a time
                and not self._running_again(handle)  # an item running again runs alone in its process
                and (self._held is not None or self._again or self._room())
                and self._send(handle)
            ):
                pass
            if not queue and (self.exhausted or self._stopped()):
                idle.append(handle)
        for handle in idle:
            self._drop(handle)
        return idle

    def _process_workers(self, handle: Worker) -> list[Worker]:
        """This map's workers on ``handle``'s process: itself, or (``threads_per_worker``) the
        call slots of its process it holds, which die together."""
        if handle.process is None:
            return [handle]
        return [worker for worker in self.workers.values() if worker.group == handle.group]

    def _process_queues(self, handle: Worker) -> list[deque[_InFlight]]:
        return [self._queued[worker.id] for worker in self._process_workers(handle)]

    def _running_again(self, handle: Worker) -> bool:
        return any(queue and queue[-1].attempt for queue in self._process_queues(handle))

    def _stopped(self) -> bool:
        """The pool drains and every item read has been sent: a worker with nothing queued is
        handed back (see the module's docstring)."""
        return self._dispatcher.draining and not self._again and self._held is None

    def _room(self) -> bool:
        return self._in_flight + self._buffered < _AHEAD

    def _batch_size(self) -> int:
        if self._chunksize is not None:
            return self._chunksize
        if self._rate is None:
            return 1
        return max(1, min(_MAX_BATCH, int(self._rate * _TARGET_SECONDS)))

    def _send(self, handle: Worker) -> bool:
        """Send the next batch to ``handle``; False if there is none it may take now.

        A batch too big for the worker's requests pipe waits (``_held``) until a worker has
        nothing queued: queued behind a running batch, writing it would block this thread until
        the worker reads it, and a stuck tool never would, so no timeout could fire. An item
        running again goes alone to a worker with nothing queued, so that if it kills that
        worker again, it fails alone.
        """
        queue = self._queued[handle.id]
        alone = not any(self._process_queues(handle))
        if self._held is None and not ((alone and self._take_again()) or self._take_batch()):
            return False  # the input has run out, or the pool drains
        start, count, items, refused, attempt = self._held  # type: ignore[misc]
        if (attempt and not alone) or (queue and not handle.conn.fits(len(items) + len(self.tool) + _ENVELOPE)):
            return False  # an item running again goes to a process running nothing else of ours
        self._held = None
        # The id is drawn now, as a call's is when it is sent, so each worker sees ids grow.
        call_id = next(self._dispatcher.call_ids)
        frame = protocol.encode_frame(Batch(call_id, self.tool, msgspec.Raw(items), self.correlation_id, self._trace))
        now = time.monotonic()
        batch = _InFlight(
            call_id, start, count, now, deadline_after(self._timeout, now), refused, items if self._retries else None, attempt
        )
        queue.append(batch)
        handle.begin(call_id, self.tool)
        if self.offload is not None and not handle.conn.fits(len(frame)):
            self._writing.add(handle.id)
            self.offload(handle, frame, batch)
            return False
        try:
            handle.conn.send(frame, batch.deadline)
        except BaseException as exc:
            self._send_failed(handle, exc)
        return True

    def written(self, handle: Worker, error: BaseException | None) -> None:
        """An offloaded write has ended (on the driver's own thread)."""
        self._writing.discard(handle.id)
        if error is not None and handle.id in self.workers:
            try:
                self._send_failed(handle, error)
            except BaseException:
                pass  # not this thread's to raise: the write's own thread was interrupted

    def _send_failed(self, handle: Worker, error: BaseException) -> None:
        if isinstance(error, WorkerGone):
            self.lost(handle)
        elif isinstance(error, DeadlineExceeded):  # it read nothing of a large batch: stopped or hung
            self._dispatcher.end(handle, on_purpose=False)
            self._expire(handle)
        else:  # Ctrl-C mid-write: part of a frame may be in the pipe
            self._dispatcher.end(handle, on_purpose=True)
            self.lost(handle)
            try:
                raise error
            finally:
                del error  # its traceback holds this frame: no cycle through the local

    def _take_batch(self) -> bool:
        """Read and encode the next batch into ``_held``; False if the input has run out, or
        the pool drains (the input is not read further)."""
        if self._exhausted or self._dispatcher.draining:
            return False
        items = list(itertools.islice(self._items, self._batch_size()))
        if not items:
            self._exhausted = True
            return False
        start = self._next_index
        self._next_index += len(items)
        if self._on_items is not None:
            self._on_items(len(items))
        encoded, refused = _encode_items(items)
        self._held = (start, len(items), encoded, refused, 0)
        self._in_flight += len(items)
        return True

    def _take_again(self) -> bool:
        """Hold the next item to run again, as a batch of its own; False if there is none."""
        if not self._again:
            return False
        index, item, attempt = self._again.popleft()
        self._held = (index, 1, b"\x91" + item, _NONE_REFUSED, attempt)  # a msgpack array of one
        return True

    # -- what comes back ---------------------------------------------------------------------------

    def receive(self, handle: Worker, messages: list[Any]) -> None:
        queue = self._queued.get(handle.id)
        if queue is None:
            return
        for message in messages:
            if not queue or message.id != queue[0].call_id:
                continue  # not ours (cannot happen while we hold the worker)
            batch = queue.popleft()
            handle.outstanding.remove(batch.call_id)
            self._in_flight -= batch.count
            now = time.monotonic()
            if queue:  # the next batch starts now: its timeout counts from here, not from sending
                queue[0].deadline = deadline_after(self._timeout, now)
            began = max(batch.sent, self._last_done.get(handle.id, 0.0))
            self._last_done[handle.id] = now
            if type(message) is BatchResult:
                handle.requests_served += batch.count
                self._measure(batch.count, now - began)
                if self._meter is not None:
                    self._meter.batch(self.tool, batch.count, now - began)
                self._store_batch(batch, message)
            elif type(message) is Failure:  # the whole batch was refused (e.g. unknown tool)
                self._fail_range(
                    batch.start,
                    batch.count,
                    tool_error(message.category, message.reason, message.message, message.details, message.traceback),
                )

    def _measure(self, count: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = count / seconds
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate

    def _store_batch(self, batch: _InFlight, message: BatchResult) -> None:
        try:
            values = decode_value(message.values)
        except errors.SnakepitError as exc:  # results pickled together: one that will not load fails them all
            self._fail_range(batch.start, batch.count, exc)
            return
        failures = {f[0]: tool_error(*f[1:]) for f in message.failures}
        if batch.refused:
            failures.update(batch.refused)
        if len(values) < batch.count:  # cancelled part-way: the rest never ran
            for offset in range(len(values), batch.count):
                failures[offset] = errors.pool_closed()
            values = values + [None] * (batch.count - len(values))
        if message.one_by_one:  # a neighbour could not be pickled
            for offset, value in enumerate(values):
                if type(value) is Ext:
                    try:
                        values[offset] = decode_value(value)
                    except errors.SnakepitError as exc:
                        failures[offset] = exc
        self._store(batch.start, values, failures)

    def _store(self, start: int, values: list[Any], failures: dict[int, errors.SnakepitError]) -> None:
        if failures and self.context is not None:
            for error in failures.values():
                error.details.setdefault("correlation_id", self.context.correlation_id)
        self.failed += len(failures)
        if self._meter is not None:
            self._meter.items(self.tool, len(values), failures)
        self._buffered += len(values)
        if self._ordered:
            self._by_start[start] = (start, values, failures)
        else:
            self._completed.append((start, values, failures))

    def _fail_range(self, start: int, count: int, error: errors.SnakepitError) -> None:
        self._store(start, [None] * count, dict.fromkeys(range(count), error))

    def lost(self, handle: Worker) -> None:
        """The worker died: its items fail with ``worker_crashed``, or run again one by one
        (an idempotent tool's, unless the pool killed the worker itself); it is handed back.
        A call slot's process died, and its other slots with it: they are lost now too (after
        taking what they had received), before an item running again is sent to one of them."""
        siblings = [worker for worker in self._process_workers(handle) if worker is not handle]
        self._lose(handle)
        for sibling in siblings:
            if sibling.id not in self.workers:
                continue
            try:  # the process's reader has sorted everything it said: results may be waiting
                self.receive(sibling, sibling.conn.take(True))
            except WorkerGone:
                pass
            self._lose(sibling)

    def _lose(self, handle: Worker) -> None:
        queue = self._queued.get(handle.id, deque())
        info = handle.conn.exit_status()
        self._dispatcher.out_of_service(handle)
        error = errors.worker_crashed(handle.id, info, f"a map of {self.tool!r}")
        again = 0
        for batch in queue:
            if batch.items is not None and batch.attempt < self._retries and not handle.killed_on_purpose:
                again += self._run_again(batch)
            else:
                self._in_flight -= batch.count
                self._fail_range(batch.start, batch.count, error)
        queue.clear()
        self._drop(handle)
        if again and self._on_retry is not None:
            self._on_retry(handle, again, info)

    def _run_again(self, batch: _InFlight) -> int:
        """Queue a lost batch's items to run again, each on its own (they stay in flight)."""
        assert batch.items is not None
        items = msgspec.msgpack.decode(batch.items, type=list[msgspec.Raw])
        again = 0
        for offset, item in enumerate(items):
            refused = batch.refused.get(offset)
            if refused is not None:  # it never ran: its own error stands
                self._in_flight -= 1
                self._store(batch.start + offset, [None], {0: refused})
                continue
            self._again.append((batch.start + offset, bytes(item), batch.attempt + 1))
            again += 1
        return again

    def expire(self, now: float) -> None:
        """Batches past their deadline fail with ``timeout``; their worker is cancelled and drained."""
        for handle in list(self.workers.values()):
            queue = self._queued.get(handle.id)
            if queue and queue[0].deadline is not None and queue[0].deadline <= now:
                self._expire(handle)

    def _expire(self, handle: Worker) -> None:
        """The running batch timed out: it fails, and so do the batches queued behind it on that
        worker (they are cancelled with it). Each item counts as a timed-out call."""
        limit = self._timeout  # set, or no batch would have a deadline
        of = "" if limit is None else f" of {seconds(limit)}"
        error = errors.timeout(
            Reason.TIMEOUT, f"a batch of {self.tool!r} exceeded its timeout{of}", tool=self.tool, stage="running", timeout=limit
        )
        queue = self._queued[handle.id]
        items = sum(batch.count for batch in queue)
        for batch in queue:
            self._fail_range(batch.start, batch.count, error)
        self._abandon(handle)  # takes them out of flight
        if self._on_timeout is not None:
            self._on_timeout(handle.id, items)

    def closing(self) -> bool:
        """The pool began closing (its shutdown interrupts the waits on the map's workers):
        the batches in flight fail with ``pool_closed`` and the workers are given up, not drained
        -- the shutdown cancels what they run and stops them. The map then asks for a worker
        again, which raises ``pool_closed``. False while the pool is open."""
        held = next(iter(self.workers.values()), None)
        if held is None or not held.conn.closing.is_set:
            return False
        error = errors.pool_closed()
        for handle in list(self.workers.values()):
            for batch in self._queued.pop(handle.id, ()):
                self._in_flight -= batch.count
                self._fail_range(batch.start, batch.count, error)
            del self.workers[handle.id]
            self._dispatcher.give_up(handle, self._leases.pop(handle.id, None))
        return True

    def next_deadline(self) -> float | None:
        deadlines = [queue[0].deadline for queue in self._queued.values() if queue and queue[0].deadline is not None]
        return min(deadlines) if deadlines else None

    # -- what goes out ------------------------------------------------------------------------------

    def ready(self) -> Iterator[tuple[list[Any], dict[int, errors.SnakepitError]]]:
        """Completed batches that may be yielded now, in the promised order:
        ``(values, {offset: error})``."""
        while True:
            if self._ordered:
                batch = self._by_start.pop(self._next_yield, None)
            else:
                batch = self._completed.popleft() if self._completed else None
            if batch is None:
                return
            _, values, failures = batch
            self._next_yield += len(values)
            self._buffered -= len(values)
            self.done += len(values)
            if self._on_progress is not None:
                self._on_progress(self.done)
            yield values, failures

    @property
    def exhausted(self) -> bool:
        """The input has run out and every batch is sent: no more workers are needed."""
        return self._exhausted and self._held is None and not self._again

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def finished(self) -> bool:
        return self.exhausted and self._in_flight == 0 and not self._buffered

    # -- ending -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Give every held worker back: cancel what it still has queued, or release it."""
        try:
            for handle in list(self.workers.values()):
                if self._queued[handle.id]:
                    self._abandon(handle)
                else:
                    self._drop(handle)
        finally:
            if self.context is not None:
                self.context.end()
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                on_close(self)

    def _abandon(self, handle: Worker) -> None:
        queue = self._queued[handle.id]
        ids = [batch.call_id for batch in queue]
        self._in_flight -= sum(batch.count for batch in queue)
        queue.clear()
        del self.workers[handle.id]
        del self._queued[handle.id]
        handle.conn.send_control(Cancel(ids))  # the running batch and those queued behind it
        self._dispatcher.abandon(handle, ids[-1], self._leases.pop(handle.id, None))

    def _drop(self, handle: Worker) -> None:
        """Hand back a worker with nothing queued (a dead one is disposed of)."""
        if self.workers.pop(handle.id, None) is None:
            return
        self._queued.pop(handle.id, None)
        self._dispatcher.release(handle, self._leases.pop(handle.id, None))


def _encode_items(items: list[Any]) -> tuple[bytes, dict[int, errors.SnakepitError]]:
    """A batch's argument dicts as the ``items`` of a ``Batch``, and the items refused.

    A batch msgpack carries exactly is one C-level pass. Otherwise each item travels on its own
    (pickled where msgpack would change it), so that one that cannot be pickled here, or
    unpickled in the worker, fails alone. A refused item travels as ``None``, which the worker
    refuses without running the tool; its error here is the one the caller sees.
    """
    try:
        exact = protocol.exact_arg_lists(items)  # TypeError unless every item is a dict
    except TypeError:
        exact = False
    if exact:
        try:
            return msgspec.msgpack.encode(items), _NONE_REFUSED
        except protocol.REFUSED:  # a value msgpack refuses despite its type: pickle it
            pass
    wire: list[Any] = []
    refused: dict[int, errors.SnakepitError] = {}
    for offset, args in enumerate(items):
        if isinstance(args, errors.SnakepitError):  # refused already (see starmap)
            refused[offset] = args
            wire.append(None)
            continue
        if type(args) is not dict:
            refused[offset] = errors.validation(
                Reason.INVALID_ARGUMENTS, f"each item of a map must be a dict of arguments, got {type(args).__name__}"
            )
            wire.append(None)
            continue
        try:
            wire.append(protocol.wire_value(args, exact=protocol.exact_args, dumps=protocol._cloud_dumps))
        except errors.SnakepitError as exc:
            refused[offset] = exc
            wire.append(None)
    return msgspec.msgpack.encode(wire), refused


# -- drivers ----------------------------------------------------------------------------------------


def run_map(
    engine: MapEngine, first: Callable[[], Worker], more: Callable[[], Worker | None], return_exceptions: bool
) -> Iterator[Any]:
    """The synchronous driver: waits on every held worker's pipe with ``poll``."""
    engine.caller = threading.get_ident()
    try:
        while True:
            _acquire(engine, first, more)
            engine.fill()
            yield from _results(engine, return_exceptions)
            if engine.finished:
                return
            if engine.in_flight:  # else: what was yielded made room, or workers died: go round
                _wait(engine)
                # What came back, or failed with a worker that died, goes out before the map
                # waits for another worker (which may never come, or not in time).
                yield from _results(engine, return_exceptions)
    finally:
        engine.close()


def _results(engine: MapEngine, return_exceptions: bool) -> Iterator[Any]:
    for values, failures in engine.ready():
        if not failures:
            yield from values
        else:
            yield from _with_failures(values, failures, return_exceptions)


def _with_failures(values: list[Any], failures: dict[int, errors.SnakepitError], return_exceptions: bool) -> Iterator[Any]:
    for offset, value in enumerate(values):
        if offset not in failures:
            yield value
        elif return_exceptions:
            yield failures[offset]
        else:
            raise failures.pop(offset)  # held by no local: its traceback, holding this frame, makes no cycle


def _acquire(engine: MapEngine, first: Callable[[], Worker], more: Callable[[], Worker | None]) -> None:
    """A first worker (waiting for one if the map holds none and has work left), then every
    idle one."""
    if not engine.workers and not engine.exhausted:
        engine.add_worker(first())
    while not engine.exhausted and (extra := more()) is not None:
        engine.add_worker(extra)


def _wait(engine: MapEngine) -> None:
    held = {id(handle.conn): handle for handle in engine.workers.values()}
    conns = [handle.conn for handle in held.values()]
    ready = type(conns[0]).wait_any(conns, engine.next_deadline()) if conns else []
    _collect(engine, [(held[id(conn)], exited) for conn, exited in ready])
    engine.closing()


def _collect(engine: MapEngine, ready: Iterable[tuple[Worker, bool]]) -> None:
    exited = {handle.id for handle, has_exited in ready if has_exited}
    for handle in {handle.id: handle for handle, _ in ready}.values():
        if handle.id not in engine.workers:
            continue
        try:
            messages = handle.conn.take(handle.id in exited)
        except WorkerGone:
            engine.lost(handle)
            continue
        engine.receive(handle, messages)
    engine.expire(time.monotonic())


async def arun_map(
    engine: MapEngine,
    first: Callable[[], Any],
    more: Callable[[], Worker | None],
    return_exceptions: bool,
) -> AsyncIterator[Any]:
    """The asyncio driver: the same engine, waiting through the event loop. A batch too big
    for a worker's pipe is written from a thread, so the loop never blocks on a slow reader."""
    loop = asyncio.get_running_loop()
    engine.caller = asyncio.current_task()
    writes: set[asyncio.Future[None]] = set()

    def offload(handle: Worker, frame: bytes | bytearray, batch: _InFlight) -> None:
        write = loop.run_in_executor(None, handle.conn.send, frame, batch.deadline)
        writes.add(write)

        def done(write: asyncio.Future[None]) -> None:
            writes.discard(write)
            engine.written(handle, None if write.cancelled() else write.exception())

        write.add_done_callback(done)

    engine.offload = offload
    try:
        while True:
            if not engine.workers and not engine.exhausted:  # as _acquire, awaiting the first worker
                engine.add_worker(await first())
            while not engine.exhausted and (extra := more()) is not None:
                engine.add_worker(extra)
            engine.fill()
            for value in _results(engine, return_exceptions):
                yield value
            if engine.finished:
                return
            if engine.in_flight:
                await _await_any(loop, engine, writes)
                for value in _results(engine, return_exceptions):  # as run_map: before another worker
                    yield value
    finally:
        engine.close()


async def _await_any(loop: asyncio.AbstractEventLoop, engine: MapEngine, writes: set[asyncio.Future[None]]) -> None:
    """Until a held worker has something to take or has ended, an offloaded write has ended,
    or the next deadline. At once when there is nothing to wait for: items in flight may be
    held by no worker (running again after theirs died, with every worker of the map lost):
    the driver then asks for a worker, as the synchronous one does."""
    if not engine.workers and not writes:
        return
    future: asyncio.Future[None] = loop.create_future()
    ready: set[tuple[Worker, bool]] = set()

    def on_ready(handle: Worker, exited: bool) -> None:
        ready.add((handle, exited))
        if not future.done():
            future.set_result(None)

    unwatch = [handle.conn.watch(loop, functools.partial(on_ready, handle)) for handle in engine.workers.values()]

    def wake(*_: Any) -> None:
        if not future.done():
            future.set_result(None)

    for write in writes:
        write.add_done_callback(wake)
    deadline = engine.next_deadline()
    timer = None if deadline is None else loop.call_at(deadline, wake)
    try:
        await future
    finally:
        for stop in unwatch:
            stop()
        if timer is not None:
            timer.cancel()
    _collect(engine, ready)
    engine.closing()

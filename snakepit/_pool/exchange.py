"""One call on one checked-out worker: send it, interpret the answer, end it exactly once.

:class:`Exchange` is the sans-IO heart of a call. It interprets the worker's messages (a result,
chunks, the end of a stream, a failure) and decides how the worker leaves the caller's hands:

* released, when the call ended normally or with an error the worker reported (it is clean);
* abandoned, when the caller stops early (HALT, exception, ``close()``, timeout): the worker is
  told to cancel and the supervisor drains it until it acknowledges, off the caller's thread;
* lost, when the worker died: the caller reports ``worker_crashed`` with how it ended.

Whatever else interrupts the caller (Ctrl-C, a ``MemoryError``, an exception in its own code)
abandons the call the same way, so the worker always comes back: drained, or, if the interruption
may have cost bytes of its connection, ended and replaced.

The exchange decides. What concerns the pool's table of workers the dispatcher carries out
(``end``, ``out_of_service``, ``release``, ``abandon``); what concerns the worker itself -- sending
the call, reaping a dead worker, salvaging what it had queued -- goes straight to its connection.

A call's deadline holds while chunks keep coming: each chunk is delivered only before it, and a
consumer past it gets the ``timeout`` error instead of its next chunk.

The drivers differ only in how they wait for the next batch of messages: :meth:`Exchange.fetch`
blocks the calling thread; the asyncio driver waits through the event loop. Both deliver chunks
through one :class:`Delivery`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any, Self

from snakepit import _errors as errors
from snakepit._encoding import JSON, Encoded, encoded, packed
from snakepit._errors import Reason
from snakepit._pool.dispatcher import Dispatcher
from snakepit._protocol import (
    PACKED,
    TERMINAL,
    Cancel,
    Chunk,
    Chunks,
    End,
    Failure,
    Result,
    decode_value,
    raise_failure,
    stamp_call_id,
)
from snakepit._seam.backend import DeadlineExceeded, PoolClosing, WorkerGone
from snakepit._seam.request import CallContext
from snakepit._seam.timing import seconds
from snakepit._seam.workers import Worker
from snakepit._streaming import HALT, StreamResult, loop

MORE: Any = object()  # no answer in the messages at hand: fetch more
END: Any = object()  # the stream is over; see Exchange.result


class Exchange:
    """One call, from the moment its worker is assigned (:meth:`adopt`, under the dispatcher's
    lock) until the worker is given back: released, abandoned or lost. Dropped unfinished -- its
    caller interrupted between two steps -- it gives the worker back when collected."""

    __slots__ = (
        "dispatcher",
        "handle",
        "lease",
        "call_id",
        "tool",
        "deadline",
        "timeout",
        "started",
        "finished",
        "sent",
        "chunks",
        "final",
        "metadata",
        "chunk_metadata",
        "result",
        "_messages",
        "_index",
        "_salvaged",
        "context",
        "caller",
        "encode",
        "worker_encodes",
        "pack",
        "merged",
        "__weakref__",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        tool: str,
        deadline: float | None,
        context: CallContext | None = None,
        timeout: float | None = None,
        caller: object = None,
        encode: str | None = None,
        worker_encodes: bool = False,
        batch: int | None = None,
    ) -> None:
        self.context: CallContext | None = context
        self.encode: str | None = encode  # the call's encode option: its values are delivered as Encoded
        # The worker encodes them (process backend): a ``bytes`` value it sends is JSON (see
        # protocol.encoded_wire); else the owner encodes every value.
        self.worker_encodes: bool = worker_encodes
        # A batched stream's most chunks per value, where the owner packs them (see Delivery.take):
        # a worker that encodes sends its batches packed.
        self.pack: int | None = None if worker_encodes or encode is None else batch
        self.merged: int = 0  # chunks it packed into a value with the one before: the result counts values
        self.caller: object = caller  # the thread (its ident) or asyncio task that began the call: see Dispatcher.holds
        self.finished: bool = False
        self.handle: Worker = None  # type: ignore[assignment]  # set by adopt()
        self.lease: int = 0
        self.dispatcher: Dispatcher = dispatcher
        self.call_id: int = -1  # drawn when the call is sent
        self.tool: str = tool
        self.deadline: float | None = deadline
        self.timeout: float | None = timeout  # the call's timeout in seconds, which set the deadline
        self.started: float = time.perf_counter()
        self.sent: bool = False  # the call may be in the worker's pipe
        self.chunks: int = 0
        self.final: bool = False
        self.metadata: Any = None
        self.chunk_metadata: dict[int, Any] = {}  # chunk index -> the metadata the tool attached to it
        self.result: StreamResult | None = None
        self._messages: list[Any] = []
        self._index: int = 0
        self._salvaged: bool = False

    @property
    def correlation_id(self) -> str | None:
        return None if self.context is None else self.context.correlation_id

    # -- owning the worker (Owner, see dispatcher.py) -------------------------------------------------

    def adopt(self, handle: Worker, lease: int) -> None:
        self.handle = handle
        self.lease = lease

    def disown(self, handle: Worker) -> bool:
        if self.sent or self.finished:
            return False
        self.handle = None  # type: ignore[assignment]
        return True

    def __del__(self) -> None:
        # getattr: an __init__ interrupted half-way leaves attributes unset
        if getattr(self, "handle", None) is not None and not self.finished:
            self.dispatcher.cancel_later(self)  # no lock here: see Dispatcher.cancel_later

    # -- sending and waiting ---------------------------------------------------------------------

    def start(self, frame: bytearray, attachments: Any = None) -> None:
        """Send the encoded ``Call`` (see protocol.call_frame) to the worker this exchange was
        given; its id is drawn now, so that each worker sees its calls' ids in increasing order."""
        call_id = next(self.dispatcher.call_ids)
        stamp_call_id(frame, call_id)
        self.send(frame, call_id, attachments)

    def send(self, frame: bytearray, call_id: int, attachments: Any = None) -> None:
        """Send the encoded ``Call`` (its id stamped in); if that is interrupted half-way, the
        pipe is unusable."""
        handle = self.handle
        try:
            self.call_id = call_id
            handle.begin(call_id, self.tool)
            self.sent = True
            handle.conn.send(frame, self.deadline, attachments)
        except WorkerGone:
            self.gone()
        except DeadlineExceeded:  # it read nothing of a large call: stopped or hung
            self.dispatcher.end(handle, on_purpose=False)
            self.expired()
        except PoolClosing:  # the pool closes while a large call is half-written: the pipe is spoilt
            self.dispatcher.end(handle, on_purpose=True)
            self.interrupted()
        except BaseException:  # Ctrl-C mid-write: part of a frame may be in the pipe
            if not self.sent:
                self.cancel()  # nothing was written: the worker is clean
                raise
            self.dispatcher.end(handle, on_purpose=True)
            self.finished = True
            handle.conn.exit_status()
            self.dispatcher.out_of_service(handle)
            self.dispatcher.release(handle, self.lease)
            raise

    def feed(self, messages: list[Any]) -> None:
        self._messages = messages
        self._index = 0

    def fetch(self) -> None:
        """Block until the worker says more (the synchronous driver)."""
        try:
            self.feed(self.handle.conn.receive(self.deadline))
        except WorkerGone:
            self.gone()
        except DeadlineExceeded:
            self.expired()
        except PoolClosing:
            self.interrupted()

    def gone(self) -> None:
        """The worker died: first deliver what it had queued, then report the crash."""
        if not self.finished and not self._salvaged:
            self._salvaged = True
            # Once it is gone for good, the messages it had produced but not delivered: they are
            # the caller's, in order, before the crash is reported.
            conn = self.handle.conn
            conn.exit_status()
            messages = conn.salvage()
            if messages:
                self.feed(messages)
                return
        self.lost()

    # -- interpreting ----------------------------------------------------------------------------

    def next_value(self) -> Any:
        """The call's result, or ``MORE``; raises the call's error."""
        messages = self._messages
        call_id = self.call_id
        while self._index < len(messages):
            message = messages[self._index]
            if message.id == call_id:
                kind = type(message)
                if kind is Result or kind is Failure:
                    self.release()  # before the index moves past it: see cancel()
                    self._index += 1
                    if kind is Failure:
                        raise_failure(message)
                    return decode_value(message.value) if self.encode is None else self.deliver(message.value)
            self._index += 1
        return MORE

    def next_batch(self) -> Any:
        """The data of the next run of chunks as a list, ``MORE`` or ``END``.

        Raises the stream's error. Items may still be pickle extensions: :meth:`decode` them as
        they are delivered.
        """
        messages = self._messages
        index = self._index
        count = len(messages)
        call_id = self.call_id
        batch: list[Any] = []
        while index < count:
            message = messages[index]
            kind = type(message)
            if kind is Chunks and message.id == call_id:
                index += 1
                batch += message.items
                continue
            if kind is Chunk and message.id == call_id:
                index += 1
                batch.append(message.data)
                attached = None if message.metadata is None else self.decode(message.metadata)
                if attached is not None:
                    self.chunk_metadata[self.chunks + len(batch) - 1] = attached
                if message.final:
                    self.final = True
                    self.metadata = attached  # the result's: the final chunk's
                continue
            if batch:
                break
            index += 1
            if message.id != call_id:
                continue
            if kind is End or kind is Failure:
                self.release()  # before the index moves past it: cancel() looks for it there
            self._index = index
            if kind is End:
                if message.cancelled:  # not by us: the pool is closing
                    raise errors.pool_closed()
                self.result = self._stream_result(halted=False)
                return END
            if kind is Failure:
                raise_failure(message)
        self._index = index
        if batch:
            self.chunks += len(batch)
            return batch
        return MORE

    def decode(self, value: Any) -> Any:
        """A wire value as the caller's object; a value that will not unpickle ends the stream."""
        if type(value) not in PACKED:
            return value
        try:
            return decode_value(value)
        except errors.SnakepitError:
            self.cancel()
            raise

    def deliver(self, value: Any) -> Any:
        """A result or chunk as the caller gets it: :meth:`decode`, and with the call's ``encode``
        option an :class:`Encoded` (what the worker did not encode, the owner does, the same
        way); a value that cannot be encoded ends the stream."""
        kind = type(value)
        if kind is bytes and self.worker_encodes:  # the worker encoded it as JSON: the common case
            return Encoded(value, JSON)
        if kind is Encoded:  # the worker encoded it otherwise
            return value
        value = self.decode(value)
        if self.encode is None or type(value) is Encoded:
            return value
        try:
            return encoded(value, self.encode)
        except errors.SnakepitError:
            self.cancel()
            raise

    # -- ending ----------------------------------------------------------------------------------

    @property
    def limit(self) -> float:
        """The deadline as a number (``inf``: none), for the per-chunk check."""
        return math.inf if self.deadline is None else self.deadline

    def release(self) -> None:
        if not self.finished:
            self.finished = True
            self.handle.requests_served += 1
            self.dispatcher.release(self.handle, self.lease)

    def cancel(self) -> None:
        """Stop early: if the call already ended, or never reached the worker, just release;
        else cancel it in the worker."""
        if self.finished or self.handle is None:
            return
        if not self.sent:
            self.finished = True
            self.dispatcher.release(self.handle, self.lease)
            return
        rest = self._messages[self._index :]
        self._messages, self._index = [], 0  # undelivered: large ones would hold shared memory
        if any(isinstance(m, TERMINAL) and m.id == self.call_id for m in rest):
            self.release()
            return
        self.finished = True
        self.handle.requests_served += 1
        if self.dispatcher.closed:  # the shutdown cancels it, and stops the worker: give it up
            self.dispatcher.give_up(self.handle, self.lease)
            return
        self.handle.conn.send_control(Cancel([self.call_id]))
        self.dispatcher.abandon(self.handle, self.call_id, self.lease)

    def halt(self, undelivered: int = 0) -> StreamResult:
        """The callback returned HALT with ``undelivered`` chunks of its batch left: stop."""
        self.chunks -= undelivered  # the result counts what the caller actually received
        self.cancel()
        self.result = self._stream_result(halted=True)
        return self.result

    def expired(self) -> None:
        self.cancel()
        self.dispatcher.counters.bump("timeouts")
        limit = self.timeout
        of = "" if limit is None else f" of {seconds(limit)}"
        fields: dict[str, Any] = {"stage": "running"} if limit is None else {"stage": "running", "timeout": limit}
        self.dispatcher.observer.emit(
            "timeout",
            logging.INFO,  # the caller gets the error too
            f"call to {self.tool!r} on worker {self.handle.id} exceeded its timeout{of}",
            tool=self.tool,
            worker_id=self.handle.id,
            correlation_id=self.correlation_id,
            **fields,
        )
        raise errors.timeout(
            Reason.TIMEOUT,
            f"call to {self.tool!r} exceeded its timeout{of}",
            tool=self.tool,
            worker_id=self.handle.id,
            **fields,
        )

    def interrupted(self) -> None:
        """The pool began closing while the call waited on its worker: ``pool_closed`` now. The
        worker is given up, not drained: the shutdown cancels its call and stops it."""
        self.finished = True
        self._messages, self._index = [], 0  # undelivered: large ones would hold shared memory
        self.dispatcher.give_up(self.handle, self.lease)
        raise errors.pool_closed()

    def lost(self) -> None:
        """The worker died under this call: report how, and let the supervisor replace it."""
        self.finished = True
        handle = self.handle
        info = handle.conn.exit_status()  # its exit code or signal is the caller's error
        closed = self.dispatcher.closed  # read first: the release may end a drain, and so begin the shutdown
        self.dispatcher.out_of_service(handle)
        self.dispatcher.release(handle, self.lease)
        if closed:
            raise errors.pool_closed()
        during = "a stream" if self.chunks else "a call"
        raise errors.worker_crashed(handle.id, info, f"{during} to {self.tool!r}")

    def _stream_result(self, halted: bool) -> StreamResult:
        return StreamResult(
            chunks=self.chunks - self.merged,
            worker_id=self.handle.id,
            execution_time_ms=(time.perf_counter() - self.started) * 1000.0,
            synthetic_final=not self.final,
            halted=halted,
            metadata=self.metadata,
            correlation_id=self.correlation_id,
        )


class _Closed(Exception):
    """The stream was closed (from another thread) while waiting: the iteration ends."""


def end_call(exchange: Exchange, error: BaseException | None = None) -> None:
    """A stream iterator's call is over (see :class:`~snakepit._seam.request.CallContext`)."""
    if exchange.context is not None:
        exchange.context.end(error)


_ALL_BYTES = {bytes}  # the types of a run of chunks the worker encoded as JSON


class Delivery:
    """The one chunk-delivery loop of every stream driver (sync and asyncio, callback and
    iterator): the next chunk's data as the caller may have it -- decoded, and only before the
    call's deadline -- or ``MORE`` (wait for the worker, then ask again) or ``END``. The drivers
    differ only in how they wait."""

    __slots__ = ("exchange", "batch", "next", "limit", "metadata")

    def __init__(self, exchange: Exchange) -> None:
        self.exchange: Exchange = exchange
        self.batch: list[Any] = []
        self.next: int = 0
        self.limit = exchange.limit
        self.metadata: Any = None  # what the tool attached to the chunk last delivered

    def take(self) -> Any:
        position = self.next
        batch = self.batch
        if position >= len(batch):
            batch = self.exchange.next_batch()
            if batch is MORE or batch is END:
                return batch
            self.batch = batch
            position = 0
        if time.monotonic() >= self.limit:
            self.batch = []
            self.exchange.expired()
        self.next = position + 1
        attached = self.exchange.chunk_metadata
        self.metadata = attached.pop(self.exchange.chunks - len(batch) + position, None) if attached else None
        data = batch[position]
        if self.exchange.encode is not None:
            if self.exchange.pack is not None:
                return self._packed(data)
            return self.exchange.deliver(data)
        return data if type(data) not in PACKED else self.exchange.decode(data)

    def _packed(self, data: Any) -> Encoded:
        """A batched stream's next value, where the owner packs it: ``data`` and the chunks
        after it at hand, as the worker would have (a chunk with metadata, or the final one,
        alone). A chunk that cannot be packed ends the stream, after those before it: a batch
        ends before it (halved until it packs), and it comes alone in the next."""
        exchange = self.exchange
        assert exchange.pack is not None and exchange.encode is not None
        start = self.next - 1  # where ``data`` is in the run
        values = [exchange.decode(data)]  # one that will not unpickle ends the stream
        if self.metadata is None and not self.last_was_final:
            for item in self._ready(exchange.pack - 1, exchange.final):
                try:
                    values.append(decode_value(item) if type(item) in PACKED else item)
                except errors.SnakepitError:
                    break
        while True:
            try:
                batch = packed(values, accept_pickle=exchange.encode == "pickle")
            except errors.SnakepitError:
                if len(values) == 1:
                    exchange.cancel()
                    raise
                del values[(len(values) + 1) // 2 :]
                continue
            self.next = start + len(values)  # the chunks after the batch are taken again
            exchange.merged += len(values) - 1
            return batch

    def take_ready(self, limit: int) -> list[Any]:
        """Up to ``limit`` more chunks that have already arrived, without waiting for any (none
        once the deadline has passed: the next :meth:`take` raises it). It stops before a chunk
        the tool attached metadata to: :meth:`take` delivers that one, so :attr:`metadata`
        always describes each chunk it gives. (None in a stream whose batches the owner packs:
        :meth:`take` packs those at hand.)"""
        if time.monotonic() >= self.limit or self.exchange.pack is not None:
            return []
        items = self._ready(limit)
        if self.exchange.encode is not None:
            deliver = self.exchange.deliver
            if self.exchange.worker_encodes and set(map(type, items)) == _ALL_BYTES:
                return list(map(Encoded, items, repeat(JSON, len(items))))  # the common case, in C-level passes
            return [deliver(item) for item in items]
        decode = self.exchange.decode
        return [item if type(item) not in PACKED else decode(item) for item in items]

    def _ready(self, limit: int, spare_last: bool = False) -> list[Any]:
        """Up to ``limit`` more items of the current run, in their wire form, stopping before
        one the tool attached metadata to (and before the run's last, if ``spare_last``)."""
        start = self.next
        items = self.batch[start : min(start + limit, len(self.batch) - spare_last)]
        attached = self.exchange.chunk_metadata
        if attached:
            first = self.exchange.chunks - len(self.batch) + start
            for offset in range(len(items)):
                if first + offset in attached:
                    items = items[:offset]
                    break
        self.next = start + len(items)
        if items:
            self.metadata = None
        return items

    @property
    def undelivered(self) -> int:
        """Chunks of the current run not delivered (a HALT leaves them)."""
        return len(self.batch) - self.next

    @property
    def last_was_final(self) -> bool:
        """The chunk delivered last was the tool's final one (``StreamChunk(is_final=True)``):
        the worker sends it last, at the end of the run it came in."""
        return self.exchange.final and self.next >= len(self.batch)


# -- synchronous drivers -------------------------------------------------------------------------


def run_execute(exchange: Exchange) -> Any:
    try:
        while True:
            value = exchange.next_value()
            if value is not MORE:
                return value
            exchange.fetch()
    except BaseException:
        exchange.cancel()  # a no-op once the call has ended; else the caller was interrupted
        raise


def run_stream(exchange: Exchange, callback: Callable[[Any], Any]) -> StreamResult:
    delivery = Delivery(exchange)
    take = delivery.take
    try:
        while True:
            data = take()
            if data is MORE:
                exchange.fetch()
            elif data is END:
                assert exchange.result is not None
                return exchange.result
            elif callback(data) is HALT:
                return exchange.halt(delivery.undelivered)
    except BaseException:
        exchange.cancel()
        raise


def carry_on(stream: Any, exchange: Exchange | None, error: errors.SnakepitError) -> bool:
    """After a stream's restart (sync or async: the one decision of both, a Stream or an
    AsyncStream): carry on with its exchange, or end with ``error`` if there is none."""
    if exchange is None:
        stream._on_error()
        end_call(stream._exchange, error)
        return False
    stream._exchange = exchange
    stream._delivery = Delivery(exchange)
    return True


class Stream:
    """Iterator over a stream's chunk data; also a context manager.

    Leaving the loop early, ``close()``, or garbage collection cancels the tool in the worker.
    After exhaustion, :attr:`result` is the :class:`~snakepit.StreamResult`.

    A ``for`` loop calls nothing on its iterator when it is left (``break``, ``return``, an
    exception in its body), and the stream itself may still be referenced: so ``iter(stream)`` is
    a one-shot generator (:func:`snakepit._streaming.loop`) that only the loop holds, and whose closing -- the moment
    the loop drops it -- cancels the call. A later loop over the same stream sees it cancelled:
    it yields nothing more.
    """

    __slots__ = (
        "_exchange",
        "_delivery",
        "_on_error",
        "_owner",
        "_restart",
        "_closed",
        "_waiting",
        "_lock",
        "_ending",
        "__weakref__",
    )

    def __init__(
        self,
        exchange: Exchange,
        on_error: Callable[[], None],
        owner: object = None,
        restart: Callable[[errors.SnakepitError, Exchange], Exchange | None] | None = None,
    ) -> None:
        self._exchange: Exchange = exchange
        self._delivery: Delivery = Delivery(exchange)
        self._on_error: Callable[[], None] = on_error
        self._owner: object = owner  # keeps the pool alive while its stream is in use
        self._restart: Callable[[errors.SnakepitError, Exchange], Exchange | None] | None = (
            restart  # the call run again after its error, or None: see Pool._retry_after
        )
        self._closed: bool = False
        self._waiting: bool = False  # a thread is waiting for the worker in __next__
        self._lock: threading.Lock = threading.Lock()  # close() from another thread against that wait
        self._ending: threading.Lock = threading.Lock()  # a latch: the first _end() ends the call, never blocking

    def __iter__(self) -> Iterator[Any]:
        return loop(self)

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        while True:
            try:
                data = self._delivery.take()
                while data is MORE:
                    self._fetch()
                    data = self._delivery.take()
            except _Closed:
                raise StopIteration from None
            except errors.SnakepitError as error:
                try:
                    again = self._run_again(error)
                except BaseException:
                    self._closed = True
                    raise
                if not again:
                    self._closed = True  # over: as a generator that raised, it yields nothing more
                    raise
                continue
            except BaseException as error:
                self._closed = True
                self._exchange.cancel()  # Ctrl-C or a MemoryError while waiting: the worker comes back
                end_call(self._exchange, error)
                raise
            if data is END:
                self._closed = True  # its worker serves others now: never wait on it again
                end_call(self._exchange)
                raise StopIteration
            return data

    def _run_again(self, error: errors.SnakepitError) -> bool:
        """Carry on with the call run again (True); or it ends with ``error`` (False: the caller
        raises it where it caught it -- raised here, the error's traceback would hold this frame,
        which holds the error: a cycle keeping the stream, its worker's connection and every
        frame alive until a garbage collection); raises why it could not run again."""
        try:
            exchange = None if self._restart is None else self._restart(error, self._exchange)
        except errors.SnakepitError as failed:
            self._on_error()
            end_call(self._exchange, failed)
            raise
        return carry_on(self, exchange, error)

    @property
    def result(self) -> StreamResult | None:
        """How the stream ended; ``None`` until it has."""
        return self._exchange.result

    @property
    def metadata(self) -> dict[str, Any] | None:
        """What the tool attached to the chunk delivered last (``StreamChunk(data,
        metadata=...)``); ``None`` if it attached nothing."""
        return self._delivery.metadata

    @property
    def worker_id(self) -> int:
        return self._exchange.handle.id

    def _fetch(self) -> None:
        """Wait for the worker, unless the stream is closed; a close() from another thread
        meanwhile is carried out here, by the thread that reads the worker's pipe."""
        with self._lock:
            if self._closed:
                raise _Closed()
            self._waiting = True
        try:
            self._exchange.fetch()
        finally:
            with self._lock:
                self._waiting = False
                closed = self._closed
            if closed:
                self._end()
                raise _Closed()

    def close(self) -> None:
        """Cancel the tool in the worker if it is still running; the iteration ends. From
        another thread while one waits for the next chunk: the worker is asked to stop at once,
        and the waiting thread, woken by its answer, ends the call and the iteration."""
        with self._lock:
            already, self._closed = self._closed, True
            waiting = self._waiting
        if waiting:
            exchange = self._exchange
            if not already and not exchange.finished and exchange.sent:
                exchange.handle.conn.send_control(Cancel([exchange.call_id]))
            return
        self._end()  # also after a loop left early: its end, handed to the supervisor, may not have run yet

    def _end(self) -> None:
        if not self._ending.acquire(blocking=False):
            return  # ended already (a close() racing a loop left early)
        self._exchange.cancel()
        self._delivery.batch = []  # undelivered: large chunks would hold shared memory
        end_call(self._exchange)

    def _left(self) -> None:
        """The loop over the stream was left early. This may run in a garbage collection (the
        loop's generator in a reference cycle), on a thread holding any pool lock: the stream is
        closed now, without a lock, and the call cancelled on the supervisor's thread."""
        if not self._closed:
            self._closed = True
            if not self._exchange.finished:
                self._exchange.dispatcher.defer(self._end)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Dropping the stream drops its exchange, whose __del__ cancels the call.

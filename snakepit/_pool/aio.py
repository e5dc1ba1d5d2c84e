"""The asyncio drivers: the same calls, waiting through the event loop instead of a thread.

Nothing here re-implements a call. Checkout is :meth:`Dispatcher.request`/``settle`` with a
future as the waker instead of a lock; a call is the same :class:`~snakepit._pool.exchange.Exchange`,
fed by :func:`fetch`, which waits for the worker's pipe (and its pidfd) with
``loop.add_reader`` instead of ``poll``. No thread is spent per call, and sync and async callers
share one pool.

Cancelling the awaiting task cancels the call: a waiting checkout leaves the queue, a running
call is cancelled in the worker exactly as a timeout or a HALT would (the generator's
``finally`` runs before that worker takes another call).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self

from snakepit import _errors as errors
from snakepit._pool.dispatcher import Dispatcher, Owner
from snakepit._pool.exchange import END, MORE, Delivery, Exchange, carry_on, end_call
from snakepit._pool.router import Ticket
from snakepit._seam.affinity import Affinity
from snakepit._seam.backend import DeadlineExceeded, PoolClosing, WorkerGone
from snakepit._seam.timing import earliest
from snakepit._seam.workers import Worker
from snakepit._streaming import HALT, AsyncLoop, StreamResult

# Many streams on one loop interleave fairly: a stream hands the loop back after this many
# chunks even when more are already buffered.
_FAIR_SHARE = 256

loop_time = time.monotonic  # what asyncio's default loop.time() is, and what deadlines are made of


async def checkout(
    dispatcher: Dispatcher,
    session_id: str | None,
    affinity: Affinity | None,
    queue_deadline: float | None,
    call_deadline: float | None,
    owner: Owner | None = None,
) -> Worker:
    handle, ticket, parked = dispatcher.request(session_id, affinity, _park, owner)
    if handle is not None:
        return handle
    assert ticket is not None
    deadline = earliest(queue_deadline, call_deadline)
    try:
        while handle is None:
            try:
                await asyncio.wait_for(parked, None if deadline is None else max(0.0, deadline - loop_time()))
            except TimeoutError:
                pass
            handle, parked = dispatcher.settle(ticket, queue_deadline, call_deadline, _park)
    except errors.SnakepitError:
        raise  # the ticket was refused or timed out: it is no longer anywhere
    except BaseException:  # the task was cancelled, or anything else interrupted the wait
        dispatcher.forsake(ticket)
        raise
    return handle


async def start_off_loop(exchange: Exchange, frame: bytearray, attachments: Any) -> None:
    """Start a call whose frame the worker's pipe cannot hold, from a thread: writing it waits
    for the worker to read (until the call's deadline), which must not stall the loop."""
    started = asyncio.get_running_loop().run_in_executor(None, exchange.start, frame, attachments)
    try:
        await asyncio.shield(started)
    except asyncio.CancelledError:
        # The write goes on in its thread; once it is done, cancel the call it started.
        started.add_done_callback(lambda done: exchange.cancel())
        raise


def _park(ticket: Ticket) -> asyncio.Future[None]:
    """The waker of a ticket a coroutine waits on: a future of its loop (called under the
    dispatcher's lock, on the loop's thread).

    Held strongly, unlike a thread's lock (dispatcher._park): a task waiting here may be
    referenced by nothing else, and must not be collected while it waits in the queue. A
    cancelled task leaves the queue itself (forsake, in checkout)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:  # from any thread: whoever frees a worker
        try:
            loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    ticket.waker = wake
    return future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Readable:
    """Wakes a waiting coroutine when a worker has something to take, or has ended.

    Watched through the loop from the first wait of an exchange until it ends. A reply is often
    there before anyone waits for it (the loop had other work): then the exchange never watches
    at all, which saves registering with the loop and unregistering on every call.
    """

    __slots__ = ("_loop", "_conn", "_future", "exited", "_unwatch")

    def __init__(self, handle: Worker) -> None:
        self._loop = asyncio.get_running_loop()
        self._conn = handle.conn
        self._future: asyncio.Future[None] | None = None
        self.exited: bool = False
        self._unwatch: Callable[[], None] | None = None

    def _ready(self, exited: bool) -> None:
        if exited:
            self.exited = True
        future = self._future
        if future is None:
            # Nobody waits: the consumer is busy elsewhere (awaiting a socket, say) while the
            # worker's output sits unread. A reader is level-triggered, so left in place it would
            # wake the loop on every turn until then: it goes, and the next wait watches again.
            self._pause()
        elif not future.done():
            future.set_result(None)

    async def wait(self, deadline: float | None) -> None:
        """Until readable; ``DeadlineExceeded`` if ``deadline`` (monotonic, = loop time) passes."""
        if self._unwatch is None and self._conn is not None:
            self._unwatch = self._conn.watch(self._loop, self._ready)
        future = self._future = self._loop.create_future()
        timer = None if deadline is None else self._loop.call_at(deadline, _resolve, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            self._future = None
        if deadline is not None and self._loop.time() >= deadline:
            raise DeadlineExceeded()

    def _pause(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()

    def close(self) -> None:
        self._pause()
        self._conn = None

    def close_soon(self) -> None:
        """:meth:`close`, from any thread (a garbage collection): on the loop's own thread."""
        try:
            self._loop.call_soon_threadsafe(self.close)
        except RuntimeError:  # the loop is closed, and its readers with it
            pass


async def fetch(exchange: Exchange, readable: Readable) -> None:
    """The async twin of :meth:`Exchange.fetch`: wait for more from the worker, then feed it."""
    try:
        conn = exchange.handle.conn
        while True:
            if conn.closing.is_set:  # first: a closed pool's workers' descriptors may be closed too
                raise PoolClosing()
            messages = conn.take(readable.exited)
            if messages:
                exchange.feed(messages)
                return
            if not conn.spin():  # a quick reply is taken without a trip through the selector
                await readable.wait(exchange.deadline)
    except WorkerGone:
        exchange.gone()
    except DeadlineExceeded:
        exchange.expired()
    except PoolClosing:
        exchange.interrupted()


async def run_execute(exchange: Exchange) -> Any:
    readable = Readable(exchange.handle)
    try:
        while True:
            value = exchange.next_value()
            if value is not MORE:
                return value
            await fetch(exchange, readable)
    except BaseException:
        exchange.cancel()  # a no-op once the call has ended; else the task was cancelled
        raise
    finally:
        readable.close()


async def run_stream(exchange: Exchange, callback: Callable[[Any], Any]) -> StreamResult:
    """``callback`` may be a plain function or a coroutine function."""
    readable = Readable(exchange.handle)
    delivery = Delivery(exchange)
    take = delivery.take
    delivered = 0
    try:
        while True:
            data = take()
            if data is MORE:
                await fetch(exchange, readable)
                continue
            if data is END:
                assert exchange.result is not None
                return exchange.result
            outcome = callback(data)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome is HALT:
                return exchange.halt(delivery.undelivered)
            delivered += 1
            if delivered % _FAIR_SHARE == 0:
                await asyncio.sleep(0)
    except BaseException:
        exchange.cancel()
        raise
    finally:
        readable.close()


class AsyncStream:
    """``async for data in pool.astream(...)``; also an async context manager.

    Leaving the loop early, ``aclose()``, cancelling the task or dropping the iterator cancels
    the tool in the worker. After exhaustion, :attr:`result` is the :class:`StreamResult`.

    As for :class:`~snakepit._pool.exchange.Stream`, ``async for`` iterates a one-shot iterator
    (:class:`snakepit._streaming.AsyncLoop`) that only the loop holds: leaving the loop early drops it, which cancels
    the call at once (not through the event loop's async-generator finaliser, a loop turn later).
    A later loop over the same stream sees it cancelled.
    """

    __slots__ = (
        "_start",
        "_exchange",
        "_delivery",
        "_readable",
        "_on_error",
        "_owner",
        "_delivered",
        "_restart",
        "_context",
        "_closed",
        "_ending",
        "__weakref__",
    )

    def __init__(
        self,
        start: Awaitable[Exchange],
        on_error: Callable[[], None],
        owner: object = None,
        restart: Callable[[errors.SnakepitError, Exchange], Awaitable[Exchange | None]] | None = None,
        context: Any = None,
    ) -> None:
        self._context: Any = context  # the call's CallContext, ended if it never starts
        self._start: Awaitable[Exchange] | None = start
        self._exchange: Exchange | None = None
        self._delivery: Delivery | None = None
        self._readable: Readable | None = None
        self._on_error: Callable[[], None] = on_error
        self._owner: object = owner
        self._delivered: int = 0
        self._restart: Callable[[errors.SnakepitError, Exchange], Awaitable[Exchange | None]] | None = (
            restart  # the call run again after its error, or None: see Pool._retry_after
        )
        self._closed: bool = False  # by aclose(), or a loop left early: nothing more is delivered
        self._ending: threading.Lock = threading.Lock()  # a latch: the first _end() ends the call, never blocking

    def __aiter__(self) -> AsyncLoop:
        return AsyncLoop(self)

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if self._delivery is None:
            try:
                await self._begin()
            except BaseException:
                self._closed = True
                raise
        delivery = self._delivery
        assert delivery is not None
        self._delivered += 1
        if self._delivered % _FAIR_SHARE == 0:
            await asyncio.sleep(0)
        while True:
            try:
                data = delivery.take()
                while data is MORE:
                    assert self._readable is not None
                    await fetch(delivery.exchange, self._readable)
                    data = delivery.take()
            except errors.SnakepitError as error:
                self._close_readable()
                try:
                    again = await self._run_again(error)
                except BaseException:
                    self._closed = True
                    raise
                if again is None:
                    self._closed = True  # over: as a generator that raised, it yields nothing more
                    raise
                delivery = again
                continue
            except BaseException as error:  # the task was cancelled, or anything else interrupted the wait
                end_call(delivery.exchange, error)
                await self.aclose()
                raise
            if data is END:
                self._closed = True  # its worker serves others now: never wait on it again
                self._close_readable()
                end_call(delivery.exchange)
                raise StopAsyncIteration
            return data

    async def _run_again(self, error: errors.SnakepitError) -> Delivery | None:
        """:meth:`Stream._run_again <snakepit._pool.exchange.Stream._run_again>`, awaiting the
        restart: the new delivery, or None (the caller raises ``error``)."""
        assert self._exchange is not None
        try:
            exchange = None if self._restart is None else await self._restart(error, self._exchange)
        except errors.SnakepitError as failed:
            self._on_error()
            end_call(self._exchange, failed)
            raise
        if not carry_on(self, exchange, error):
            return None
        self._readable = Readable(self._exchange.handle)
        return self._delivery

    async def _begin(self) -> None:
        assert self._start is not None
        start, self._start = self._start, None
        try:
            self._exchange = await start
        except BaseException as error:
            if isinstance(error, errors.SnakepitError):
                self._on_error()
            if self._context is not None:
                self._context.end(error)
            raise
        self._readable = Readable(self._exchange.handle)
        self._delivery = Delivery(self._exchange)

    @property
    def result(self) -> StreamResult | None:
        """How the stream ended; ``None`` until it has."""
        return None if self._exchange is None else self._exchange.result

    @property
    def metadata(self) -> dict[str, Any] | None:
        """What the tool attached to the chunk delivered last (``StreamChunk(data,
        metadata=...)``); ``None`` if it attached nothing."""
        return None if self._delivery is None else self._delivery.metadata

    @property
    def worker_id(self) -> int | None:
        return None if self._exchange is None else self._exchange.handle.id

    @property
    def correlation_id(self) -> str | None:
        """The call's (given, or generated by the pool)."""
        return None if self._context is None else self._context.correlation_id

    def take_ready(self, limit: int) -> list[Any]:
        """Up to ``limit`` more items that have already arrived, without waiting for any (what a
        consumer batching on its own side can pack with the item it just got). They carry no
        metadata: an item the tool attached metadata to comes from the iteration itself, with
        :attr:`metadata`."""
        if self._delivery is None or limit <= 0:
            return []
        items = self._delivery.take_ready(limit)
        self._delivered += len(items)
        return items

    @property
    def last_was_final(self) -> bool:
        """The item returned last was the tool's final chunk (``StreamChunk(is_final=True)``)."""
        return self._delivery is not None and self._delivery.last_was_final

    async def aclose(self) -> None:
        """Cancel the tool in the worker if it is still running."""
        self._closed = True
        self._end()

    def _end(self) -> None:
        if not self._ending.acquire(blocking=False):
            return  # ended already
        if self._start is not None:  # never started: nothing is running
            close = getattr(self._start, "close", None)
            if close is not None:
                close()
            self._start = None
        if self._exchange is not None:
            self._exchange.cancel()
            end_call(self._exchange)
        self._close_readable()

    def _left(self) -> None:
        """A loop over the stream was left (it may run in a garbage collection, on a thread
        holding any pool lock): closed now, without a lock; a call still running is cancelled
        on the supervisor's thread, its readers removed on the event loop's."""
        if self._closed:
            return
        self._closed = True
        exchange = self._exchange
        if exchange is None:
            self._end()  # never started: closing the coroutine that would start it takes no lock
        elif not exchange.finished:
            readable, self._readable = self._readable, None
            if readable is not None:
                readable.close_soon()
            exchange.dispatcher.defer(self._end)

    def _close_readable(self) -> None:
        if self._readable is not None:
            self._readable.close()
            self._readable = None

    async def __aenter__(self) -> Self:
        if self._exchange is None:
            await self._begin()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A collection may run anywhere, even inside a pool call holding a pool lock: take no
        # lock here. The readers' removal goes to the loop; the exchange, dropped with this
        # stream, cancels its call itself (Exchange.__del__).
        readable = self._readable
        if readable is not None:
            readable.close_soon()
        start = self._start
        if start is not None:
            close = getattr(start, "close", None)
            if close is not None:
                close()

"""``Client.map`` and ``Client.amap``: a pool's ``map`` over the existing rpcs.

Each item is an ``ExecuteTool`` call of its own, pipelined: as many calls in flight as the
served pool runs at once (its workers times their threads, which the server says), so that no
item waits in its queue, spending its timeout there; and a new item is read from the input only
when a call completes -- the input is read lazily, on the
caller's side, so an endless generator works in bounded memory. Results leave in input order,
or as they complete with ``ordered=False``; a failed item raises its error at its position, or
is yielded with ``return_exceptions=True``; leaving the loop early cancels the calls in flight.

One call per item, rather than a batch per ``ExecuteStreamingTool``: every client of the
protocol can do the same, an item's failure is its own, and the server's pool balances the
items over its workers as they free up.
"""

from __future__ import annotations

import asyncio
import queue
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import grpc

from snakepit import _errors as errors
from snakepit.progress import Reporter

WINDOW = 64  # calls in flight when neither the caller nor the server says (see Client.map)
_HELD = 4096  # results an ordered map holds back for an earlier one before it reads more input


class Window:
    """The order results leave in, and how many calls may still start; shared by both drivers."""

    def __init__(self, ordered: bool, return_exceptions: bool, reporter: Reporter, limit: int) -> None:
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.reporter = reporter
        self.limit = limit
        self._started = 0  # items read from the input, each given the next index
        self.exhausted = False
        self.in_flight: dict[int, Any] = {}  # index -> the call (a future or task)
        self._done: dict[int, Any] = {}  # ordered: outcomes waiting for those before them
        self._ready: deque[Any] = deque()
        self._next = 0  # ordered: the index that leaves next
        self._completed = 0

    def room(self) -> bool:
        """Another item may start: calls in flight are below the limit, and so are results held
        back for an earlier, slower one (ordered: memory stays bounded however slow it is)."""
        return not self.exhausted and len(self.in_flight) < self.limit and len(self._done) < _HELD

    def start(self, source: Iterator[Any], start: Callable[[Any], Any]) -> Iterator[tuple[int, Any]]:
        """Read items and ``start(args)`` their calls while there is room: each call begun, with
        its item's index. An item refused before sending (bad args) is its own outcome at once;
        the input running out ends the map's reading."""
        while self.room():
            try:
                args = next(source)
            except StopIteration:
                self.exhausted = True
                return
            index, self._started = self._started, self._started + 1
            try:
                call = start(args)
            except errors.SnakepitError as error:
                self.complete(index, error)
                continue
            self.in_flight[index] = call
            yield index, call

    def complete(self, index: int, outcome: Any) -> None:
        """An item's result or ``SnakepitError``."""
        self.in_flight.pop(index, None)
        self._completed += 1
        if self.reporter.active:
            self.reporter.update(self._completed)
        if not self.ordered:
            self._ready.append(outcome)
            return
        self._done[index] = outcome
        while self._next in self._done:
            self._ready.append(self._done.pop(self._next))
            self._next += 1

    def out(self) -> Iterator[Any]:
        """What may leave now, in order; a failed item raises, unless ``return_exceptions``."""
        ready = self._ready
        while ready:
            outcome = ready.popleft()
            if isinstance(outcome, errors.SnakepitError) and not self.return_exceptions:
                raise outcome
            yield outcome

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.in_flight and not self._ready


def run_map(items: Iterable[Any], start: Callable[[Any], Any], settle: Callable[[Any], Any], window: Window) -> Iterator[Any]:
    """The synchronous driver: ``start(args)`` begins a call as a grpc future, ``settle(future)``
    gives its result or raises its ``SnakepitError``."""
    completions: queue.SimpleQueue[int] = queue.SimpleQueue()
    source = iter(items)
    try:
        while not window.finished:
            for index, call in window.start(source, start):
                call.add_done_callback(lambda _, index=index: completions.put(index))
            yield from window.out()
            if window.in_flight:
                index = completions.get()
                window.complete(index, _outcome(settle, window.in_flight[index]))
                yield from window.out()
    finally:
        for call in window.in_flight.values():
            call.cancel()
        window.reporter.close()


async def arun_map(
    items: Iterable[Any], start: Callable[[Any], Any], settle: Callable[[Any], Any], window: Window
) -> AsyncIterator[Any]:
    """The asyncio driver: ``start(args)`` gives a coroutine running the call (on the shared gRPC
    loop) that returns its response, ``settle(response)`` its result."""
    loop = asyncio.get_running_loop()
    source = iter(items)
    tasks: dict[asyncio.Task[Any], int] = {}
    try:
        while not window.finished:
            tasks.update((task, index) for index, task in window.start(source, lambda args: loop.create_task(start(args))))
            for outcome in window.out():
                yield outcome
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    window.complete(tasks.pop(task), _outcome(settle, task))
                for outcome in window.out():
                    yield outcome
    finally:
        for task in tasks:
            task.cancel()
        window.reporter.close()


def _outcome(settle: Callable[[Any], Any], call: Any) -> Any:
    try:
        return settle(call)
    except errors.SnakepitError as error:
        return error
    except (grpc.FutureCancelledError, asyncio.CancelledError):
        return errors.pool_error(errors.Reason.POOL_CLOSED, "the call was cancelled (the client closed)")

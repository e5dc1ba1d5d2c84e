"""Calls as :class:`concurrent.futures.Future` objects (``pool.submit``, and the Executor).

No thread per call: each pool that hands out futures has one event loop on a thread of its own
(started at the first ``submit``), which drives every such call through the pool's asyncio path
and completes its future. Results, errors and done-callbacks are therefore delivered on that
thread -- never the supervisor's or the reactor's -- and a callback that blocks holds back the
other futures of its pool, as in ``concurrent.futures``.

A future is *pending* while its call waits for a worker, and *running* from the moment it has
one (``set_running_or_notify_cancel``): ``future.cancel()`` withdraws a waiting call and, as
``concurrent.futures`` defines it, refuses once the call runs; :meth:`FutureDriver.cancel`
(``pool.cancel(future)``) cancels a running call as a cancelled task does, and its future then
raises :class:`concurrent.futures.CancelledError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from snakepit import _errors as errors
from snakepit._errors import Reason

_log = logging.getLogger("snakepit")

__all__ = ["CallFuture", "FutureDriver", "notify_cancelled"]

Running = Callable[[], bool]  # called once the call has a worker: False if its future was cancelled first


class CallFuture(concurrent.futures.Future[Any]):
    """A :class:`concurrent.futures.Future` of a pool's call (see the module's docstring)."""

    _task: asyncio.Task[None] | None = None
    _driver: FutureDriver | None = None
    _told = False  # those waiting know it was cancelled (set_running_or_notify_cancel said so)

    def cancel(self) -> bool:
        """Withdraw the call if it is still waiting for a worker; False once it runs (use
        ``pool.cancel(future)`` for a running call)."""
        if not super().cancel():
            return False
        task, driver = self._task, self._driver
        if task is not None and driver is not None:
            driver.call_soon(task.cancel)
        return True


class FutureDriver:
    """One pool's futures: the event loop that drives their calls (see the module's docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def spawn(self, future: CallFuture, call: Callable[[Running], Coroutine[Any, Any, Any]]) -> CallFuture:
        """Run ``call(running)`` for ``future`` on the loop and complete the future with its
        outcome; ``running`` marks the future running (see :class:`CallFuture`)."""
        future._driver = self  # before the loop starts it: pool.cancel() knows it at once
        self.call_soon(self.start_on_loop, future, call)
        return future

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop or self._open()
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has stopped: the pool is closed
            raise errors.pool_closed() from None

    def cancel(self, future: Any) -> bool:
        """Cancel ``future``'s call, waiting or running; False if it is done already."""
        if not isinstance(future, CallFuture) or future._driver is not self:
            raise errors.validation(Reason.INVALID_ARGUMENTS, f"not a future of this pool's calls: {future!r}")
        if future.cancel():
            return True
        task = future._task
        if future.done() or task is None:
            return False
        self.call_soon(task.cancel)
        return True

    def close(self) -> None:
        """Stop the loop once the calls under way have ended (the pool has failed those it had
        not finished with ``pool_closed``); joins its thread unless called from it."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(_stop_when_idle(loop)))
        except RuntimeError:
            return  # stopped already
        if thread is not threading.current_thread():
            thread.join(_CLOSE_GRACE * 3)
            if thread.is_alive():  # a done-callback blocks the loop: it holds the thread, not close()
                _log.warning("snakepit: a future's done-callback still blocks the pool's futures thread; closing without it")

    # -- on the loop -----------------------------------------------------------------------------

    def _open(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise errors.pool_closed()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_run, args=(loop,), name=f"snakepit-futures-{self._name}", daemon=True)
                thread.start()
                self._thread, self._loop = thread, loop
            return self._loop

    def start_on_loop(self, future: CallFuture, call: Callable[[Running], Coroutine[Any, Any, Any]]) -> None:
        """:meth:`spawn`, called on the loop's own thread (by what runs there: the Executor's feeder)."""
        future._driver = self
        if future.cancelled():
            notify_cancelled(future)
            return
        started = False

        def running() -> bool:
            nonlocal started
            if started:  # a retry's new worker
                return True
            started = True
            if future.set_running_or_notify_cancel():
                return True
            future._told = True
            return False

        task = asyncio.get_running_loop().create_task(_complete(future, call(running)))
        future._task = task
        if future.cancelled():  # cancelled while the task was being made (see CallFuture.cancel)
            task.cancel()


async def _complete(future: CallFuture, call: Coroutine[Any, Any, Any]) -> None:
    try:
        value = await call
    except asyncio.CancelledError:
        if future.cancelled():  # withdrawn while it waited for a worker
            notify_cancelled(future)
        else:  # a running call, cancelled by pool.cancel()
            _settle(future.set_exception, concurrent.futures.CancelledError("the call was cancelled"))
    except BaseException as error:
        _settle(future.set_exception, error)
    else:
        _settle(future.set_result, value)
    finally:
        future._task = None  # no cycle: the task's coroutine holds the future


def notify_cancelled(future: CallFuture) -> None:
    """Tell those waiting on a cancelled future (``wait``, ``as_completed``) that it is done:
    ``concurrent.futures`` leaves that to whoever would have run it (once: a second time, it
    logs a CRITICAL record)."""
    if not future._told:
        future._told = True
        future.set_running_or_notify_cancel()


def _settle(how: Callable[[Any], None], outcome: Any) -> None:
    try:
        how(outcome)
    except concurrent.futures.InvalidStateError:  # cancelled while it was waiting, as it failed
        pass


def _run(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


_CLOSE_GRACE = 5.0  # seconds the calls under way get to end once the pool is shut down


async def _stop_when_idle(loop: asyncio.AbstractEventLoop) -> None:
    """The pool is shut down, so its calls end at once; one that does not within the grace is
    cancelled (its future raises CancelledError) rather than hold ``close()`` up."""
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks(loop) if task is not me]
    if others:
        _, stuck = await asyncio.wait(others, timeout=_CLOSE_GRACE)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=_CLOSE_GRACE)
    loop.stop()

"""A small event loop: one thread, a selector, timers, and work handed over from other threads.

Callbacks for readable descriptors and due timers run on the loop's thread; other threads hand
it work with :meth:`Reactor.submit`, which writes one byte to a self-pipe to wake the selector.
All work runs under one lock -- also work submitted after the thread has stopped, which then
runs inline in the submitting thread -- so the state the callbacks touch never sees two threads.
:meth:`Reactor.defer` hands work over without taking any lock at all, for ``__del__`` methods.

User code never runs under that lock: events emitted by the work (which reach ``on_event`` and
log handlers) are held by the observer and delivered once a round of work has released it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from snakepit._observe import Observer

log = logging.getLogger("snakepit")

Callback = Callable[..., Any]


# The selector's wait is re-armed after this long at most: a far-off timer needs no huge timeout.
_LONGEST_WAIT = 3600.0


class Reactor:
    def __init__(self, name: str, observer: Observer) -> None:
        self.observer = observer
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (self._drain_wakeups, ()))
        self._queue_lock = threading.Lock()
        self._wake_lock = threading.Lock()  # see defer()
        self._commands: deque[tuple[Callback, tuple[Any, ...]]] = deque()
        self._deferred: queue.SimpleQueue[tuple[Callback, tuple[Any, ...]]] = queue.SimpleQueue()
        self._running = False
        self.work_lock = threading.RLock()
        self._timers: list[tuple[float, int, Callback, tuple[Any, ...]]] = []
        self._timer_seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- any thread --------------------------------------------------------------------------------

    def start_thread(self) -> None:
        with self._queue_lock:
            self._running = True
        self._thread.start()

    def submit(self, fn: Callback, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread, or right here once it has stopped."""
        with self._queue_lock:
            if self._running:
                was_empty = not self._commands
                self._commands.append((fn, args))
                if was_empty:
                    try:
                        os.write(self._wake_w, b"\0")
                    except BlockingIOError:  # already awake
                        pass
                return
        self._locked(fn, args)

    def defer(self, fn: Callback, *args: Any) -> None:
        """:meth:`submit` without waiting for a lock: safe from ``__del__`` and from a thread
        that holds any pool lock. Dropped if the loop has stopped (the pool is closed)."""
        if not self._running:  # nothing will run it; keeping it would keep what it holds alive
            return
        self._deferred.put((fn, args))  # SimpleQueue.put is reentrant
        # The wake-up pipe must not be written once closed (its number may name another file by
        # then); close() holds this lock while it closes it. Never wait for it: if it is taken,
        # the loop is closing and needs no wake-up.
        if self._wake_lock.acquire(blocking=False):
            try:
                if self._wake_w >= 0:
                    os.write(self._wake_w, b"\0")
            except OSError:  # already awake (pipe full)
                pass
            finally:
                self._wake_lock.release()

    def call_later(self, delay: float | None, fn: Callback, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread after ``delay`` seconds."""
        self.submit(self.later, delay, fn, *args)

    def join(self) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def close(self) -> None:
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self._selector.close()

    # -- the loop's thread (or inline after it stopped) --------------------------------------------

    def later(self, delay: float | None, fn: Callback, *args: Any) -> None:
        """Run ``fn(*args)`` after ``delay`` seconds; never, if ``delay`` is ``None``."""
        if delay is not None:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn, args))

    def clear_timers(self) -> None:
        self._timers.clear()

    def watch(self, fd: int, fn: Callback, *args: Any) -> None:
        """Call ``fn(*args)`` whenever ``fd`` is readable. Registered afresh: a record the selector
        still has of a descriptor closed since (the kernel dropped it) would otherwise only be
        updated, and the new file with that number never wake the loop."""
        self.unwatch(fd)
        self._selector.register(fd, selectors.EVENT_READ, (fn, args))

    def unwatch(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def finished(self) -> bool:
        """Whether the loop may end (checked after each round of work)."""
        return False

    def _run(self) -> None:
        while True:
            timeout = min(_LONGEST_WAIT, max(0.0, self._timers[0][0] - time.monotonic())) if self._timers else None
            ready = self._selector.select(timeout)
            self.observer.hold()
            try:
                with self.work_lock:
                    done = self._round(ready)
            finally:
                self.observer.release()
            if done:
                break
        with self._queue_lock:
            self._running = False
            leftover = list(self._commands)
            self._commands.clear()
        while not self._deferred.empty():
            leftover.append(self._deferred.get_nowait())
        for fn, args in leftover:
            self._locked(fn, args)

    def _round(self, ready: list[tuple[selectors.SelectorKey, int]]) -> bool:
        """One round of work (lock held); True when the loop may end."""
        for key, _ in ready:
            fn, args = key.data
            self._call(fn, args)
        while True:
            with self._queue_lock:
                if not self._commands:
                    break
                fn, args = self._commands.popleft()
            self._call(fn, args)
        while not self._deferred.empty():
            fn, args = self._deferred.get_nowait()
            self._call(fn, args)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(self._timers)
            self._call(fn, args)
        return self.finished()

    def _locked(self, fn: Callback, args: tuple[Any, ...]) -> None:
        """Work run inline, outside the loop's thread: under the lock, events held until after."""
        self.observer.hold()
        try:
            with self.work_lock:
                fn(*args)
        finally:
            self.observer.release()

    def _call(self, fn: Callback, args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("snakepit: %s failed on the supervisor thread", getattr(fn, "__name__", fn))

    def _drain_wakeups(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

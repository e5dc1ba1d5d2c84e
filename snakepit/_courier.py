"""A courier: items handed over here are delivered, in order, by a thread of its own.

For deliveries that run user code (log handlers, ``on_event`` callbacks), which may be slow or
call back into the pool: whoever hands an item over never waits for the delivery. The thread
starts with the first item. With a ``capacity``, items beyond it are dropped and counted rather
than queued without bound (``deliver_dropped`` hears of the count with the next batch;
:attr:`Courier.dropped_total` counts them all).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("snakepit")


class Courier(Generic[T]):
    def __init__(
        self,
        name: str,
        deliver: Callable[[T], None],
        *,
        capacity: int | None = None,
        deliver_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self._name = name
        self._deliver = deliver
        self._capacity = capacity
        self._deliver_dropped = deliver_dropped
        self._cond = threading.Condition()
        self._pending: deque[T] = deque()
        self._dropped = 0
        self.dropped_total = 0  # items dropped since the courier was made (read without the lock)
        self._busy = False  # a batch is being delivered
        self._closed = False
        self._thread: threading.Thread | None = None

    def post(self, items: Iterable[T]) -> bool:
        """Hand items over; False (nothing taken) once the courier is closed."""
        with self._cond:
            if self._closed:
                return False
            for item in items:
                if self._capacity is not None and len(self._pending) >= self._capacity:
                    self._dropped += 1
                    self.dropped_total += 1
                else:
                    self._pending.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def flush(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until everything handed over so far is delivered."""
        if threading.current_thread() is self._thread:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending or self._busy) and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)

    def close(self, timeout: float) -> None:
        """Deliver what is pending (up to ``timeout``), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and not self._dropped:
                    return
                batch = list(self._pending)
                self._pending.clear()
                dropped, self._dropped = self._dropped, 0
                self._busy = True
            try:
                for item in batch:
                    try:
                        self._deliver(item)
                    except BaseException:  # the thread must outlive any one delivery
                        log.exception("snakepit: %s could not deliver %r", self._name, item)
                if dropped and self._deliver_dropped is not None:
                    self._deliver_dropped(dropped)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

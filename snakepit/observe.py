"""Observability: what happens to workers and calls, as log records and as plain data.

Every event is logged on the ``snakepit`` logger with ``record.snakepit_event`` (its name) and
its fields as extras, and is passed as a dict to ``Pool(on_event=...)`` for metrics exporters::

    {"event": "worker_exit", "time": 1700000000.0, "worker_id": 3, "pid": 4242, "signal": "SIGKILL"}

Events: ``worker_start``, ``worker_ready``, ``worker_start_failed``, ``worker_exit`` (with ``exit_code`` or ``signal``,
and ``expected`` for a shutdown or recycling), ``worker_restart`` (with ``delay``),
``worker_recycle`` (with ``reason``), ``worker_hung``, ``cancel_timeout`` (a worker that did not
give a cancelled call up in time), ``timeout``, ``queue_timeout``, ``pool_saturated``.

They are emitted on the slow paths only (a start, a death, an error), and cost a flag check
when nobody listens: nothing is built unless the logger or a callback wants it. They are never
delivered while a pool lock is held, so a callback may call into the pool (``pool.stats()``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("snakepit")

EventCallback = Callable[[dict[str, Any]], None]


class Observer:
    """Delivers events to the log and to ``on_event``.

    A thread that holds a pool lock while events arise (the supervisor during a round of work)
    calls :meth:`hold` first and :meth:`release` once the lock is released: the events are
    delivered then, so no callback or log handler ever runs under a pool lock (it may call back
    into the pool, e.g. ``pool.stats()``).
    """

    __slots__ = ("_callback", "_held")

    def __init__(self, callback: EventCallback | None = None) -> None:
        self._callback = callback
        self._held = threading.local()  # per thread: hold depth and the events held

    def emit(self, event: str, level: int, message: str, **fields: Any) -> None:
        if self._callback is None and not log.isEnabledFor(level):
            return
        held = getattr(self._held, "events", None)
        if held is not None:
            held.append((event, level, message, fields, time.time()))
            return
        self._deliver(event, level, message, fields, time.time())

    def hold(self) -> None:
        held = self._held
        depth = getattr(held, "depth", 0)
        if depth == 0:
            held.events = []
        held.depth = depth + 1

    def release(self) -> None:
        held = self._held
        held.depth -= 1
        if held.depth == 0:
            events, held.events = held.events, None
            for args in events:
                self._deliver(*args)

    def _deliver(self, event: str, level: int, message: str, fields: dict[str, Any], when: float) -> None:
        if log.isEnabledFor(level):
            log.log(level, message, extra={"snakepit_event": event, **fields})
        callback = self._callback
        if callback is not None:
            try:
                callback({"event": event, "time": when, **fields})
            except Exception:  # a broken exporter must not break the pool
                log.exception("snakepit: on_event callback failed for %s", event)

"""Observability: what happens to workers and calls, as log records and as plain data.

Every event is logged on the ``snakepit`` logger with ``record.snakepit_event`` (its name) and
its fields as extras, and is passed as a dict to ``Pool(on_event=...)`` for metrics exporters::

    {"event": "worker_exit", "time": 1700000000.0, "worker_id": 3, "pid": 4242, "signal": "SIGKILL"}

Events: ``worker_start``, ``worker_ready``, ``worker_start_failed``, ``worker_exit`` (with ``exit_code`` or ``signal``,
and ``expected`` for a shutdown or recycling), ``worker_restart`` (with ``delay``),
``worker_recycle`` (with ``reason``), ``worker_hung``, ``cancel_timeout`` (a worker that did not
give a cancelled call up in time), ``timeout``, ``queue_timeout``, ``pool_saturated``.

They are emitted on the slow paths only (a start, a death, an error), and cost a flag check
when nobody listens: nothing is built unless the logger or a callback wants it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

log = logging.getLogger("snakepit")

EventCallback = Callable[[dict[str, Any]], None]


class Observer:
    __slots__ = ("_callback",)

    def __init__(self, callback: EventCallback | None = None) -> None:
        self._callback = callback

    def emit(self, event: str, level: int, message: str, **fields: Any) -> None:
        callback = self._callback
        if callback is None and not log.isEnabledFor(level):
            return
        if log.isEnabledFor(level):
            log.log(level, message, extra={"snakepit_event": event, **fields})
        if callback is not None:
            try:
                callback({"event": event, "time": time.time(), **fields})
            except Exception:  # a broken exporter must not break the pool
                log.exception("snakepit: on_event callback failed for %s", event)

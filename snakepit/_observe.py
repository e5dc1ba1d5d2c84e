"""Observability: what happens to workers and calls, as log records and as plain data.

Every event is logged on the ``snakepit`` logger with ``record.snakepit_event`` (its name) and
its fields as extras, and is passed as a dict to ``Pool(on_event=...)`` for metrics exporters::

    {"event": "worker_exit", "time": 1700000000.0, "worker_id": 3, "pid": 4242, "signal": "SIGKILL"}

Events: ``worker_start``, ``worker_ready``, ``worker_start_failed``, ``worker_exit`` (with ``exit_code`` or ``signal``,
and ``expected`` for a shutdown or recycling), ``worker_restart`` (with ``delay``),
``worker_recycle`` (with ``reason``), ``worker_hung``, ``worker_quarantined`` (with ``slot`` and
``delay``), ``cancel_timeout`` (a worker that did not give a cancelled call up in time),
``worker_reclaimed`` (taken back from a caller interrupted half-way), ``call_retry`` (an
idempotent call run again), ``timeout``, ``queue_timeout``, ``pool_saturated`` (the last four with
the call's ``correlation_id``; the last three, which the caller also gets as its error, at INFO,
with the limit in the message and as ``timeout``, ``queue_timeout`` or ``max_queue``). A tool's own telemetry (:mod:`snakepit.telemetry`) arrives as
``telemetry``, ``span_start``, ``span_stop`` and ``span_exception`` events, logged on
``snakepit.telemetry``.

They are emitted on the slow paths only (a start, a death, an error), and cost a flag check
when nobody listens: nothing is built unless the logger or a callback wants it. They are never
delivered while a pool lock is held, nor on the supervisor thread, so a callback may call into
the pool (``pool.stats()``, even ``pool.close()``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from snakepit import _errors as errors
from snakepit._courier import Courier

log = logging.getLogger("snakepit")
telemetry_log = logging.getLogger("snakepit.telemetry")  # tools' own telemetry (see snakepit.telemetry)

EventCallback = Callable[[dict[str, Any]], None]

# An event's fields become attributes of its log record, but for these names, which a record has
# already (a telemetry event's "name" is record.snakepit_name).
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_TELEMETRY_BACKLOG = 10_000  # tools' telemetry events waiting for delivery, at most


def _dropped(count: int) -> None:
    telemetry_log.warning("snakepit: %d telemetry events dropped: their listeners are slower than the tools", count)


class Observer:
    """Delivers events to the log and to ``on_event``, never while a pool lock is held.

    Events raised on a caller's thread (a timeout, a full queue) are delivered there, at once. A
    thread that holds a lock while events arise (the supervisor during a round of work) calls
    :meth:`hold` first and :meth:`release` after: its events then go to a delivery thread of
    their own, so user code never runs on the supervisor thread either. An ``on_event`` that
    blocks, or calls ``pool.close()``, cannot stall supervision.
    """

    __slots__ = ("_subscribers", "_subscribing", "_held", "_courier", "_telemetry")

    def __init__(self, callback: EventCallback | None = None) -> None:
        # Replaced whole, never changed in place: delivery reads it without a lock.
        self._subscribers: tuple[EventCallback, ...] = () if callback is None else (callback,)
        self._subscribing = threading.Lock()
        self._held = threading.local()  # per thread: hold depth and the events held
        self._courier: Courier[tuple[str, int, str, dict[str, Any], float]] = Courier(
            "snakepit-events", lambda args: self._deliver(*args)
        )
        # Tools' telemetry has a courier of its own, bounded: tools may send it faster than
        # slow listeners take it, and what they cannot take is dropped, never queued for ever
        # (the pool's own events are few, and never dropped).
        self._telemetry: Courier[tuple[str, int, str, dict[str, Any], float]] = Courier(
            "snakepit-telemetry", lambda args: self._deliver(*args), capacity=_TELEMETRY_BACKLOG, deliver_dropped=_dropped
        )

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Deliver every event from now on to ``callback`` as well; returns what unsubscribes it."""
        if not callable(callback):
            raise errors.validation(errors.Reason.INVALID_ARGUMENTS, f"an event subscriber must be callable, got {callback!r}")
        with self._subscribing:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._subscribing:
                subscribers = list(self._subscribers)
                if callback in subscribers:
                    subscribers.remove(callback)
                    self._subscribers = tuple(subscribers)

        return unsubscribe

    def emit(self, event: str, level: int, message: str, **fields: Any) -> None:
        if not self._subscribers and not log.isEnabledFor(level):
            return
        held = getattr(self._held, "events", None)
        if held is not None:
            held.append((event, level, message, fields, time.time()))
            return
        self._deliver(event, level, message, fields, time.time())

    def telemetry(self, fields: dict[str, Any]) -> None:
        """A tool's telemetry event (already a dict, with its own ``time``), to ``on_event`` and
        the ``snakepit.telemetry`` logger at INFO; delivered off the calling thread."""
        if not self._subscribers and not telemetry_log.isEnabledFor(logging.INFO):
            return
        fields = dict(fields)
        event = fields.pop("event", "telemetry")
        when = fields.pop("time", None) or time.time()
        message = f"{event} {fields.get('name')} from worker {fields.get('worker_id')} ({fields.get('tool')})"
        item = (event, logging.INFO, message, {**fields, "_logger": telemetry_log}, when)
        if not self._telemetry.post((item,)):  # closed: nothing will deliver it, so here
            self._deliver(*item)

    @property
    def telemetry_dropped(self) -> int:
        """Tools' telemetry events dropped so far, their listeners being slower than the tools."""
        return self._telemetry.dropped_total

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
            if events:
                self._post(events)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until every event posted so far is delivered."""
        self._courier.flush(timeout)
        self._telemetry.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is pending (up to ``timeout``), then stop the delivery threads."""
        self._courier.close(timeout)
        self._telemetry.close(timeout)

    def _post(self, events: list[tuple[str, int, str, dict[str, Any], float]]) -> None:
        if not self._courier.post(events):  # closed: nothing will deliver them, so here
            for args in events:
                self._deliver(*args)

    def _deliver(self, event: str, level: int, message: str, fields: dict[str, Any], when: float) -> None:
        try:
            logger = fields.pop("_logger", log)
            if logger.isEnabledFor(level):
                extra = {f"snakepit_{key}" if key in _RECORD_ATTRIBUTES else key: value for key, value in fields.items()}
                logger.log(level, message, extra={"snakepit_event": event, **extra})
        except Exception:  # a broken handler must not break the pool (logging reports its own)
            pass
        for callback in self._subscribers:
            try:
                callback({"event": event, "time": when, **fields})  # each its own dict
            except Exception:  # a broken exporter must not break the pool, nor the others
                log.exception("snakepit: an event subscriber failed on %s", event)

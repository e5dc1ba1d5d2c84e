"""``StreamTelemetry``: the pool's events streamed to a remote subscriber, as Snakepit's
``TelemetryEvent`` messages, under the subscriber's own controls.

Each stream is a :meth:`Pool.subscribe <snakepit.Pool.subscribe>` of its own (the first one
switches tools' telemetry on in the workers, the last one off), feeding a bounded buffer the
stream's task empties: a slow or vanished subscriber never slows the pool or the tools. Events
that find the buffer full are dropped, counted, logged, and reported on the stream by a
``snakepit.telemetry.dropped`` event (``count``) once there is room again.

Names (``event_parts``, and their dotted form that filters match): a tool's span is
``tool.execution.start|stop|exception`` (``duration`` in ns and ``duration_ms``; the span's name
in ``operation``); a tool's ``telemetry.emit`` keeps its name when it is one of Snakepit's
(``tool.result_size``, ``python.memory.sampled``...), else it is ``snakepit.telemetry.<name>``;
the pool's own events are ``snakepit.<event>`` (``snakepit.worker_exit``...). Measurements are
int64, double or string (a bool as 0/1, anything else as JSON text); metadata values strings.

Controls, per stream, as Snakepit's Python server takes them: ``toggle`` switches the stream on
or off; ``sampling`` keeps that fraction of events (clamped to [0, 1]; with ``event_patterns``,
only of the events they match); ``filter`` keeps the events whose dotted name matches an
``allow`` pattern (all if none) and no ``deny`` pattern (fnmatch; deny first).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from snakepit.grpc import _codec as codec
from snakepit.grpc import bridge_pb2 as pb

log = logging.getLogger("snakepit.grpc")

BUFFER = 1024  # events a subscriber may fall behind by before they are dropped
DROPPED = "snakepit.telemetry.dropped"

# The names Snakepit's Elixir side takes (Snakepit.Telemetry.Naming); it drops any other.
SNAKEPIT_EVENTS = frozenset(
    {
        "python.call.start",
        "python.call.stop",
        "python.call.exception",
        "python.memory.sampled",
        "python.cpu.sampled",
        "python.gc.completed",
        "python.error.occurred",
        "tool.execution.start",
        "tool.execution.stop",
        "tool.execution.exception",
        "tool.result_size",
    }
)
_SPANS = {"span_start": "start", "span_stop": "stop", "span_exception": "exception"}
_INT64 = 2**63


def event_parts(fields: Mapping[str, Any]) -> list[str]:
    """The name an event of the pool's hook (``on_event``'s dict) travels under."""
    event = str(fields.get("event"))
    if event in _SPANS:
        return ["tool", "execution", _SPANS[event]]
    if event == "telemetry":
        name = str(fields.get("name"))
        return name.split(".") if name in SNAKEPIT_EVENTS else ["snakepit", "telemetry", name]
    return ["snakepit", event]


def to_message(fields: Mapping[str, Any], parts: Sequence[str]) -> pb.TelemetryEvent:
    """An event of the pool's hook as a ``TelemetryEvent``."""
    event = pb.TelemetryEvent(
        event_parts=[codec.text(part) for part in parts],
        timestamp_ns=int(float(fields.get("time") or time.time()) * 1e9),
        correlation_id=codec.text(str(fields.get("correlation_id") or "")),
    )
    kind = fields.get("event")
    metadata: dict[str, Any] = {}
    if kind in ("telemetry", *_SPANS):
        measurements = dict(fields.get("measurements") or {})
        if kind in _SPANS:
            metadata["operation"] = fields.get("name")
            if kind == "span_start":
                measurements["system_time"] = event.timestamp_ns
            else:
                duration_ms = float(fields.get("duration_ms") or measurements.get("duration_ms") or 0.0)
                measurements["duration"] = int(duration_ms * 1e6)  # ns, as Snakepit's spans send it
                measurements["duration_ms"] = duration_ms
            if kind == "span_exception":
                error = str(fields.get("error") or "")
                metadata["error_type"], _, metadata["error_message"] = error.partition(": ")
        metadata.update(fields.get("metadata") or {})
        for key in ("tool", "worker_id"):
            if fields.get(key) is not None:
                metadata.setdefault(key, fields[key])
    else:  # the pool's own: its fields are the metadata, its numbers the measurements too
        measurements = {}
        for key, value in fields.items():
            if key in ("event", "time", "correlation_id"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                measurements[key] = value
            elif value is not None:
                metadata[key] = value
    for key, value in measurements.items():
        _set_value(event.measurements[codec.text(str(key))], value)
    for key, value in metadata.items():
        if value is not None:
            event.metadata[codec.text(str(key))] = codec.text(value if type(value) is str else codec.encode_json(value).decode())
    return event


def _set_value(target: pb.TelemetryValue, value: Any) -> None:
    if isinstance(value, bool):
        target.int_value = int(value)
    elif isinstance(value, int) and -_INT64 <= value < _INT64:
        target.int_value = value
    elif isinstance(value, float):
        target.float_value = value
    elif type(value) is str:
        target.string_value = codec.text(value)
    else:
        target.string_value = codec.text(codec.encode_json(value).decode())


def from_message(event: pb.TelemetryEvent) -> dict[str, Any]:
    """A ``TelemetryEvent`` as the dict a Python subscriber gets."""
    measurements: dict[str, Any] = {}
    for key, value in event.measurements.items():
        kind = value.WhichOneof("value")
        measurements[key] = None if kind is None else getattr(value, kind)
    return {
        "name": ".".join(event.event_parts),
        "parts": list(event.event_parts),
        "measurements": measurements,
        "metadata": dict(event.metadata),
        "time": event.timestamp_ns / 1e9,
        "correlation_id": event.correlation_id or None,
    }


class Controls:
    """One subscriber's choices: on or off, a sampling rate, allow and deny patterns. Read on the
    pool's delivery thread, changed on the gRPC loop's: each change replaces what it changes
    whole, and a filter's verdict per name is kept until the filter changes."""

    _VERDICTS = 4096  # names whose verdict is kept (a pool has a few dozen)

    def __init__(self) -> None:
        self.enabled = True
        self.sampling_rate = 1.0
        self.sampled: tuple[str, ...] = ()  # the patterns the rate applies to; none: every event
        self._filter: tuple[tuple[str, ...], tuple[str, ...], dict[str, bool]] = ((), (), {})

    def set_filter(self, allow: Iterable[str], deny: Iterable[str]) -> None:
        self._filter = (tuple(allow), tuple(deny), {})

    def apply(self, control: pb.TelemetryControl) -> None:
        which = control.WhichOneof("control")
        if which == "toggle":
            self.enabled = control.toggle.enabled
        elif which == "sampling":
            rate = control.sampling.sampling_rate
            self.sampled = tuple(control.sampling.event_patterns)
            self.sampling_rate = 0.0 if math.isnan(rate) else max(0.0, min(rate, 1.0))
        elif which == "filter":
            self.set_filter(control.filter.allow, control.filter.deny)

    def admits(self, name: str) -> bool:
        if not self.enabled:
            return False
        allow, deny, verdicts = self._filter
        verdict = verdicts.get(name)
        if verdict is None:
            verdict = not any(fnmatch.fnmatchcase(name, p) for p in deny) and (
                not allow or any(fnmatch.fnmatchcase(name, p) for p in allow)
            )
            if len(verdicts) >= self._VERDICTS:
                verdicts.clear()
            verdicts[name] = verdict
        if not verdict:
            return False
        rate = self.sampling_rate
        if rate < 1.0 and (not self.sampled or any(fnmatch.fnmatchcase(name, p) for p in self.sampled)):
            return random.random() < rate
        return True


class Hub:
    """A server's telemetry subscribers, fed by one subscription to the pool while it has any.

    Each event is named once, checked against each subscriber's controls and room, and made a
    message once, for all who want it: what a subscriber costs the pool's delivery thread is a
    check, whether it reads or not. An event too large for a message of this server is dropped
    (and counted as such for those who wanted it).
    """

    def __init__(self, pool: Any, budget: int) -> None:
        self._pool = pool
        self._budget = budget
        self._subscriptions: tuple[Subscription, ...] = ()  # replaced whole: read without a lock
        self._lock = threading.Lock()
        self._leave: Any = None  # ends the pool subscription
        self._closed = False

    def join(self, loop: asyncio.AbstractEventLoop) -> Subscription:
        subscription = Subscription(loop)
        with self._lock:
            if self._closed:
                subscription.end()
                return subscription
            self._subscriptions = (*self._subscriptions, subscription)
            if self._leave is None:
                self._leave = self._pool.subscribe(self._offer)
        return subscription

    def leave(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
            if not self._subscriptions and self._leave is not None:
                self._leave()
                self._leave = None

    def close(self) -> None:
        """The server stops: every subscriber's stream ends (after what it was sent)."""
        with self._lock:
            self._closed = True
            subscriptions = self._subscriptions
        for subscription in subscriptions:
            subscription.end()

    def _offer(self, fields: dict[str, Any]) -> None:
        """A subscriber of the pool (its delivery thread)."""
        subscriptions = self._subscriptions
        if not subscriptions:
            return
        parts = event_parts(fields)
        name = ".".join(parts)
        wanting = [s for s in subscriptions if s.controls.admits(name)]
        if not wanting:
            return
        message = to_message(fields, parts)
        if message.ByteSize() > self._budget:
            log.warning("snakepit: a telemetry event %s is too large for a message (%d bytes); dropped", name, message.ByteSize())
            for subscription in wanting:
                subscription.missed()
            return
        for subscription in wanting:
            subscription.put(message)


class Subscription:
    """What one ``StreamTelemetry`` call receives: events put here on the pool's delivery
    thread, read by the call's task on the gRPC loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, buffer: int = BUFFER) -> None:
        self.controls = Controls()
        self._loop = loop
        self._buffer = buffer
        self._lock = threading.Lock()
        self._events: deque[pb.TelemetryEvent] = deque()
        self._dropped = 0  # since the last report on the stream
        self._ended = False
        self._waiting: asyncio.Future[None] | None = None

    def put(self, message: pb.TelemetryEvent) -> None:
        with self._lock:
            if len(self._events) >= self._buffer:
                self._missed()
                return
            self._events.append(message)
            waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._loop.call_soon_threadsafe(_wake, waiting)

    def missed(self) -> None:
        with self._lock:
            self._missed()

    def _missed(self) -> None:
        self._dropped += 1
        if self._dropped == 1:
            log.warning("snakepit: a telemetry subscriber is too slow; dropping its events")

    def end(self) -> None:
        with self._lock:
            self._ended = True
            waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._loop.call_soon_threadsafe(_wake, waiting)

    async def events(self) -> AsyncIterator[pb.TelemetryEvent]:
        """The events, as they come; a drop report first when some were dropped. Ends after
        :meth:`end`, once what was put before it is out."""
        while True:
            waiting = None
            with self._lock:
                batch = list(self._events)
                self._events.clear()
                dropped, self._dropped = self._dropped, 0
                ended = self._ended
                if not batch and not dropped and not ended:
                    self._waiting = waiting = self._loop.create_future()
            if dropped:
                report = {"event": "telemetry", "name": DROPPED, "measurements": {"count": dropped}, "time": time.time()}
                log.warning("snakepit: a telemetry subscriber missed %d events", dropped)
                yield to_message(report, DROPPED.split("."))
            for message in batch:
                yield message
            if ended and not batch and not dropped:
                return
            if waiting is not None:
                await waiting

    async def follow(self, controls: AsyncIterator[pb.TelemetryControl] | Iterable[pb.TelemetryControl]) -> None:
        """Apply the subscriber's control messages as they come, until it stops sending."""
        try:
            async for control in controls:  # type: ignore[union-attr]  # grpc.aio's request iterator
                self.controls.apply(control)
        except Exception:  # the client went: the call is over too
            pass


def _wake(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)

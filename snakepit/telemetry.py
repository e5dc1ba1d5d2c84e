"""Telemetry from tools: measurements and spans that reach the owner as events and log records.

Inside a tool::

    from snakepit import telemetry

    telemetry.emit("batch_loaded", {"rows": 512, "bytes": 1 << 20}, {"source": "s3"})
    with telemetry.span("inference", {"model": "resnet"}):
        ...

Each reaches the owner as an ``on_event`` event (and a record on the ``snakepit.telemetry``
logger) carrying the worker's id, the tool and the call's correlation id::

    {"event": "telemetry", "name": "batch_loaded", "measurements": {...}, "metadata": {...},
     "worker_id": 2, "tool": "predict", "correlation_id": "5f3a9c1e-41", "time": ...}

A span sends ``span_start``, then ``span_stop`` (with ``duration_ms``) or, if its body raised,
``span_exception`` (with ``duration_ms`` and ``error``). When nothing in the owner listens (no
``on_event``, the logger disabled when the pool started) they cost a flag check. They never block
the tool: a record the owner is too slow to take is dropped, and one whose values cannot travel
(msgpack, with ``str()`` for anything else) is sent with those values as strings. Outside a worker
they do nothing.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

__all__ = ["emit", "span"]

# The call running in this context, in a worker: its Call or Batch message (``tool``,
# ``correlation``), set by the host around the tool.
current: contextvars.ContextVar[Any] = contextvars.ContextVar("snakepit_call", default=None)

# Set in a worker whose owner listens: sends one event (a dict) to the owner, never blocking.
_sink: Callable[[dict[str, Any]], None] | None = None


def install(sink: Callable[[dict[str, Any]], None] | None) -> None:
    """Where this process's telemetry goes (the worker's events channel); None: nowhere."""
    global _sink
    _sink = sink


def emit(name: str, measurements: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None) -> None:
    """Send a telemetry event named ``name`` to the owner."""
    sink = _sink
    if sink is None:
        return
    sink(_event("telemetry", name, measurements, metadata))


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A context manager timing its body: ``span_start``, then ``span_stop`` or ``span_exception``."""
    if _sink is None:
        return _NO_SPAN
    return _Span(name, attributes)


def _event(kind: str, name: str, measurements: Any, metadata: Any, **more: Any) -> dict[str, Any]:
    call = current.get()
    return {
        "event": kind,
        "name": name,
        "measurements": dict(measurements) if measurements else {},
        "metadata": dict(metadata) if metadata else {},
        "tool": None if call is None else call.tool,
        "correlation_id": None if call is None else call.correlation,
        "time": time.time(),
        **more,
    }


class _Span:
    __slots__ = ("_name", "_attributes", "_started")

    def __init__(self, name: str, attributes: Mapping[str, Any] | None) -> None:
        self._name = name
        self._attributes = attributes
        self._started = 0.0

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        sink = _sink
        if sink is not None:
            sink(_event("span_start", self._name, None, self._attributes))
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        sink = _sink
        if sink is None:
            return
        duration_ms = (time.perf_counter() - self._started) * 1000.0
        if exc is None:
            sink(_event("span_stop", self._name, {"duration_ms": duration_ms}, self._attributes, duration_ms=duration_ms))
        else:
            error = f"{type(exc).__name__}: {exc}"
            sink(
                _event(
                    "span_exception",
                    self._name,
                    {"duration_ms": duration_ms},
                    self._attributes,
                    duration_ms=duration_ms,
                    error=error,
                )
            )


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SPAN = _NoSpan()

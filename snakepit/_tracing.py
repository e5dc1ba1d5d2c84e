"""OpenTelemetry, when installed (``pip install 'snakepit-pool[otel]'``): a span per call, carried to the tool.

In the owner each call gets a span ``snakepit.call <tool>`` with two children, ``snakepit.queue``
(waiting for a worker) and ``snakepit.run`` (from sending the call to its last answer), and the
attributes ``snakepit.tool``, ``snakepit.correlation_id``, ``snakepit.session_id`` and
``snakepit.worker_id``. The call span's context travels in the call (a W3C ``traceparent``); the
worker makes it current while the tool runs, so spans a tool opens with the OpenTelemetry API are
its children, in the same trace, whatever the worker exports them with.

Spans are made only if a real tracer provider is configured in the owner when the pool starts
(the API's default one records nothing): otherwise calls cost nothing for it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any


@functools.cache
def _otel() -> tuple[Any, Any, Any] | None:
    """OpenTelemetry's context and trace APIs and a W3C propagator; None if not installed.
    Imported on first use: a pool that is not traced never imports it."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the otel extra is not installed
        return None
    return context, trace, TraceContextTextMapPropagator()


def attach(traceparent: str) -> Any:
    """In a worker: make the owner's call span current (a token for :func:`detach`), or None."""
    otel = _otel()
    if otel is None:
        return None
    context, _, propagator = otel
    try:
        return context.attach(propagator.extract({"traceparent": traceparent}))
    except Exception:  # a malformed traceparent must not fail the call
        return None


def detach(token: Any) -> None:
    otel = _otel()
    try:
        otel[0].detach(token)  # type: ignore[index]
    except Exception:
        pass


class CallTracer:
    """The owner's: starts a :class:`CallSpan` per call."""

    def __init__(self, trace: Any) -> None:
        self._tracer = trace.get_tracer("snakepit")

    def start(self, tool: str, correlation_id: str, session_id: str | None) -> CallSpan:
        return CallSpan(self._tracer, tool, correlation_id, session_id)


class CallSpan:
    __slots__ = ("_tracer", "_span", "_phase", "_ended")

    def __init__(self, tracer: Any, tool: str, correlation_id: str, session_id: str | None) -> None:
        attributes = {"snakepit.tool": tool, "snakepit.correlation_id": correlation_id}
        if session_id is not None:
            attributes["snakepit.session_id"] = session_id
        self._tracer = tracer
        self._span = tracer.start_span(f"snakepit.call {tool}", attributes=attributes)
        self._phase = self._child("snakepit.queue")
        self._ended = False

    def _child(self, name: str) -> Any:
        _, trace, _ = _otel()  # type: ignore[misc]
        return self._tracer.start_span(name, context=trace.set_span_in_context(self._span))

    @property
    def traceparent(self) -> str | None:
        _, trace, propagator = _otel()  # type: ignore[misc]
        carrier: dict[str, str] = {}
        propagator.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier.get("traceparent")

    def running(self, worker_id: int, exchange: Any = None) -> None:
        """A worker was assigned: the queue wait is over, the run begins (``exchange``: the
        attempt's, which a metered call reads; see snakepit._pool.metering)."""
        self._phase.end()
        self._span.set_attribute("snakepit.worker_id", worker_id)
        self._phase = self._child("snakepit.run")

    def end(self, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        _, trace, _ = _otel()  # type: ignore[misc]
        for span in (self._phase, self._span):
            if error is not None:
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()


def tracer() -> CallTracer | None:
    """A call tracer if OpenTelemetry is installed and a tracer provider configured, else None."""
    if "opentelemetry" not in sys.modules:
        return None  # nobody configured it: it was never imported
    otel = _otel()
    if otel is None:
        return None
    trace = otel[1]
    if type(trace.get_tracer_provider()).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return None  # nothing would record
    return CallTracer(trace)

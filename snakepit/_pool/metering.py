"""Per-tool call metrics: outcomes, queue and run times, stream chunks -- recorded only while a
pool's metrics are enabled (``pool.enable_metrics()``, ``pool.serve_metrics()``).

A call is measured by a :class:`MeteredCall` that stands in for its trace span
(``CallContext.span``), so the points a traced call already passes -- its context made, a worker
assigned (``span.running``), the call over (``CallContext.end``) -- are the points it is measured
at, and a pool without metrics pays nothing more than it did: ``CallRunner.context`` asks once
whether a meter is set. A metered call that is also traced carries its trace span inside.

* queue time: from the call's start (its context made, before its arguments are checked and
  encoded) to its first worker; a call that never got one (an unknown tool, ``queue_timeout``,
  ``pool_saturated``) has none, and is only counted by outcome;
* run time: from that worker to the call's end (its result, its error, the end of its stream);
  a call run again on another worker (``max_retries``) is one call, its retries included;
* outcome: ``ok``, the error's ``reason`` (``tool_exception``, ``timeout``...), or ``cancelled``
  when the caller stopped it with an exception of its own (a callback's, Ctrl-C, an asyncio
  task's cancellation). A stream ended early by ``HALT``, ``close()`` or leaving its loop is ``ok``.

A map (:mod:`.mapping`) records per batch: its items by outcome as their results come back, and
each item of a batch that ran as taking the batch's run time divided by its items (the worker
runs them in one go; their own times are not measured apart). A map's items wait in no queue:
they have no queue time.

Unknown tools' calls are counted under the tool ``<unknown>``, so a caller's typos cannot make
new series without end.

Recording takes one lock, shared by the pool's calls, for a few dict and list updates; a scrape
copies the records under it (:meth:`CallMeter.snapshot`) and builds its answer outside it.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

from snakepit._errors import SnakepitError

__all__ = ["BUCKETS", "UNKNOWN_TOOL", "CallMeter", "MeteredCall", "ToolRecord"]

# Upper bounds (seconds, inclusive: Prometheus's ``le``) of the time histograms' buckets, from
# a tiny call's 100 microseconds to the default timeout's five minutes; one more bucket is +Inf.
BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

UNKNOWN_TOOL = "<unknown>"  # the tool label of calls to tools the pool does not have
_CANCELLED = "cancelled"  # the outcome of a call its caller stopped with an exception of its own

_perf_counter = time.perf_counter


class ToolRecord:
    """One tool's counts: calls by outcome, the two time histograms (per bucket, not yet
    cumulative; the last bucket is +Inf), their sums, and stream chunks delivered."""

    __slots__ = ("outcomes", "queue", "queue_sum", "run", "run_sum", "chunks")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.queue: list[int] = [0] * (len(BUCKETS) + 1)
        self.queue_sum: float = 0.0
        self.run: list[int] = [0] * (len(BUCKETS) + 1)
        self.run_sum: float = 0.0
        self.chunks: int = 0

    def copy(self) -> ToolRecord:
        copy = ToolRecord()
        copy.outcomes = dict(self.outcomes)
        copy.queue = list(self.queue)
        copy.queue_sum = self.queue_sum
        copy.run = list(self.run)
        copy.run_sum = self.run_sum
        copy.chunks = self.chunks
        return copy


class CallMeter:
    """A pool's per-tool records. ``tools`` is what says which tool names are the pool's (the
    call runner's table, read at each call: it is filled when the pool starts)."""

    __slots__ = ("_tools", "_records", "_lock", "_acquire", "_release")

    def __init__(self, tools: Any) -> None:
        self._tools: Any = tools  # an object whose .tools is a mapping of the pool's tool names
        self._records: dict[str, ToolRecord] = {}
        self._lock = threading.Lock()
        self._acquire = self._lock.acquire  # the recording path's: cheaper than `with`
        self._release = self._lock.release

    def start(self, tool: Any, span: Any) -> MeteredCall:
        """A call begins: what measures it, wrapping its trace span (or None)."""
        return MeteredCall(self, tool, span)

    def known(self, tool: Any) -> bool:
        """Whether ``tool`` is one of the pool's: a label of its own (else ``<unknown>``)."""
        tools: Mapping[str, Any] = self._tools.tools
        return type(tool) is str and tool in tools

    def record(self, tool: str, outcome: str, waited: float | None, ran: float, chunks: int) -> None:
        """A call is over: its outcome, its times (``waited`` None: it never had a worker).
        (:meth:`MeteredCall.end` does the same inline: it is every metered call's cost.)"""
        self._acquire()
        try:
            record = self._records.get(tool)
            if record is None:
                record = self._records[tool] = ToolRecord()
            outcomes = record.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if waited is not None:
                record.queue[bisect_left(BUCKETS, waited)] += 1
                record.queue_sum += waited
                record.run[bisect_left(BUCKETS, ran)] += 1
                record.run_sum += ran
            if chunks:
                record.chunks += chunks
        finally:
            self._release()

    def items(self, tool: str, count: int, failures: Mapping[int, SnakepitError]) -> None:
        """A map's ``count`` items are over, ``failures`` among them."""
        with self._lock:
            record = self._records.get(tool)
            if record is None:
                record = self._records[tool] = ToolRecord()
            outcomes = record.outcomes
            ok = count - len(failures)
            if ok:
                outcomes["ok"] = outcomes.get("ok", 0) + ok
            for error in failures.values():
                outcomes[error.reason] = outcomes.get(error.reason, 0) + 1

    def batch(self, tool: str, count: int, seconds: float) -> None:
        """A map's batch of ``count`` items ran for ``seconds``: each item is observed as taking
        its share."""
        with self._lock:
            record = self._records.get(tool)
            if record is None:
                record = self._records[tool] = ToolRecord()
            record.run[bisect_left(BUCKETS, seconds / count)] += count
            record.run_sum += seconds

    def snapshot(self) -> dict[str, ToolRecord]:
        """A copy of every tool's record, taken under the lock."""
        with self._lock:
            return {tool: record.copy() for tool, record in self._records.items()}


class MeteredCall:
    """One call's measurements, in the place of its trace span (``CallContext.span``), which it
    carries inside if the call is traced too."""

    __slots__ = ("meter", "tool", "span", "started", "running_at", "exchange")

    def __init__(self, meter: CallMeter, tool: str, span: Any) -> None:
        self.meter: CallMeter | None = meter  # None once recorded
        self.tool: str = tool
        self.span: Any = span  # the call's trace span (snakepit._tracing.CallSpan), or None
        self.started: float = _perf_counter()
        self.running_at: float = 0.0  # when its first worker was assigned; 0: not yet
        # Its last attempt's Exchange (for its stream's chunks), weakly: the exchange holds the
        # call's context, which holds this; a cycle would keep a dropped exchange, and the worker
        # it would give back when collected, until a garbage collection.
        self.exchange: weakref.ref[Any] | None = None

    @property
    def traceparent(self) -> str | None:
        return None if self.span is None else self.span.traceparent

    def running(self, worker_id: int, exchange: Any = None) -> None:
        """A worker was assigned: the queue wait is over (the first time), the run begins."""
        if not self.running_at:
            self.running_at = _perf_counter()
        self.exchange = None if exchange is None else weakref.ref(exchange)
        if self.span is not None:
            self.span.running(worker_id)

    def end(self, error: BaseException | None = None) -> None:
        """The call is over: recorded once, however many times its end is reported. (What
        :meth:`CallMeter.record` does, inline: this is the cost of every metered call.)"""
        now = _perf_counter()
        if self.span is not None:
            self.span.end(error)
        meter, self.meter = self.meter, None
        if meter is None:
            return
        tool = self.tool
        if error is None:
            outcome = "ok"
        else:
            outcome = error.reason if isinstance(error, SnakepitError) else _CANCELLED
            if not meter.known(tool):
                tool = UNKNOWN_TOOL
        running = self.running_at
        exchange = None if self.exchange is None else self.exchange()
        meter._acquire()
        try:
            record = meter._records.get(tool)
            if record is None:
                record = meter._records[tool] = ToolRecord()
            outcomes = record.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if running:
                waited = running - self.started
                record.queue[bisect_left(BUCKETS, waited)] += 1
                record.queue_sum += waited
                ran = now - running
                record.run[bisect_left(BUCKETS, ran)] += 1
                record.run_sum += ran
            if exchange is not None and exchange.chunks:
                record.chunks += exchange.chunks
        finally:
            meter._release()

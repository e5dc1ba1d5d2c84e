"""The pool facade: configuration, life cycle, and the call methods users see."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import secrets
import threading
import time
import weakref
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, NamedTuple

from snakepit import _errors as errors, _protocol as protocol, _tracing as tracing
from snakepit._adapter import ToolSpec
from snakepit._seam.affinity import Affinity, parse_affinity
from snakepit._pool.sessions import SessionStore
from snakepit._seam.backend import DEATH_CAUSES, create_backend
from snakepit._seam.launch import BackendOptions
from snakepit._errors import Reason
from snakepit._observe import Observer, telemetry_log
from snakepit.progress import Reporter
from snakepit._streaming import StreamResult
from snakepit._pool import aio, mapping
from snakepit._pool.aio import AsyncStream
from snakepit._pool.dispatcher import Counters, Dispatcher
from snakepit._pool.exchange import Exchange, Stream, run_execute, run_stream
from snakepit._pool.quarantine import Quarantine
from snakepit._pool.recycling import RECYCLE_REASONS, RecyclePolicy
from snakepit._seam.request import CallContext, CallRequest, check_callback, check_correlation_id, check_routing, check_session_id
from snakepit._seam.calls import Calls
from snakepit._seam.session import Session, SessionInfo, check_metadata
from snakepit._pool.supervisor import Supervisor
from snakepit._seam.timing import check_timeout, deadline_after

__all__ = ["Pool"]


def _positive_int(name: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise errors.validation(Reason.INVALID_CONFIG, f"{name} must be a positive int or None, got {value!r}")
    return value


def _positive(name: str, value: Any, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise errors.validation(Reason.INVALID_CONFIG, f"{name} must be a positive, finite number, got {value!r}")
    return value


class Pool(Calls["Stream", "AsyncStream"]):
    """A pool of worker processes, each hosting one instance of ``adapter``.

    Parameters:
        adapter: a :class:`~snakepit.BaseAdapter` subclass, or a ``"package.module:Class"`` string.
            Importable classes travel by name; others (``__main__``, notebooks, local classes)
            by value with cloudpickle.
        size: number of worker processes; defaults to the number of CPUs available.
        affinity: what a call with a ``session_id`` does when its worker is busy or gone:
            ``"hint"`` (run elsewhere), ``"strict_queue"`` (wait for it) or ``"strict_fail_fast"``
            (fail with ``worker_busy``). Overridable per session and per call.
        adapter_args: keyword arguments for the adapter's constructor (in each worker).
        timeout: default per-call limit in seconds, covering time queued and time running;
            ``None`` or ``math.inf`` for no limit.
        max_retries: how many times a call of an ``@tool(idempotent=True)`` tool runs again on
            another worker when its worker dies under it (see the README's *Crash barrier*).
        threads_per_worker: calls each worker process runs at once, each on a thread of its own,
            over one adapter instance (which must say ``thread_safe = True``): capacity is
            ``size * threads_per_worker``. For I/O-bound tools and code that releases the GIL;
            see the README's *Thread profile*.
        max_queue: how many calls may wait for a worker before ``pool_saturated``.
        queue_timeout: how long a call may wait for a worker before ``queue_timeout``
            (``None`` or ``math.inf``: as long as it takes).
        session_ttl: seconds of inactivity after which a session (and its pin) is forgotten.
        max_sessions: how many sessions may be open before ``session_quota_exceeded``.
        max_requests: recycle a worker after this many calls (default: never).
        worker_ttl: recycle a worker this many seconds after it started (default: never).
        memory_limit_mb: recycle a worker whose own resident memory (not pages it shares, such
            as large values in shared memory) reaches this, checked after each call and while
            idle (default: no limit). Recycling happens between calls, never inside one.
        worker_env: extra environment variables for the workers: a mapping, or a callable
            ``(slot) -> mapping`` for a per-worker environment, called once per slot
            ``0..size-1`` when the pool is made; a worker's replacements keep its slot (and so its
            environment): ``lambda i: {"CUDA_VISIBLE_DEVICES": str(i)}`` gives each worker a GPU
            of its own. BLAS/OpenMP thread counts are set to 1 unless this overrides them.
        backend: where workers run: ``"process"`` (local worker processes, the default) or
            ``"ray"`` (Ray actors, on this machine or a cluster; see the README's *Scaling out*).
        start_method: how ``backend="process"`` starts a worker: ``"forkserver"`` (the default)
            forks it from a template process that has already imported snakepit and the
            adapter's module (a ``"module:Class"`` adapter, or a class importable by name), so a
            worker starts in milliseconds; ``"spawn"`` starts a fresh interpreter each time (what
            the template falls back to if it cannot serve). See the README's *Start-up*.
        start_timeout: how long a worker may take to import and ``initialize()``. This and
            ``cancel_grace``, ``shutdown_timeout`` and ``heartbeat_timeout`` may be ``None`` (or
            ``math.inf``): no limit.
        cancel_grace: how long a cancelled or timed-out call may take to stop before its worker
            is terminated and replaced. The tool is interrupted at once (``CallCancelled`` is
            raised in it); only code stuck in C outlives the grace.
        kill_grace: how long a terminated worker gets between SIGTERM and SIGKILL.
        shutdown_timeout: how long ``close()`` (or recycling) lets a worker run ``cleanup()``
            before terminating it.
        heartbeat_interval: how often idle workers are pinged.
        heartbeat_timeout: an idle worker that has not answered a ping for this long is hung: it
            is killed and replaced.
        quarantine_after, quarantine_window: a worker slot that loses this many workers (crashes
            and failed starts, not workers the pool killed itself) within this many seconds is
            quarantined: its next worker starts after a back-off (1 s, doubling with each
            quarantine in a row, up to 60 s), while the other workers keep serving.
            ``quarantine_after=None``: never.
        on_event: called with each event (worker start, exit, restart, recycle, hang, timeout,
            saturation) as a plain dict, for metrics exporters. See :mod:`snakepit._observe`.
    """

    def __init__(
        self,
        adapter: type | str,
        *,
        size: int | None = None,
        affinity: Affinity | str = Affinity.HINT,
        adapter_args: Mapping[str, Any] | None = None,
        timeout: float | None = 300.0,
        max_retries: int = 1,
        threads_per_worker: int = 1,
        max_queue: int = 1000,
        queue_timeout: float | None = 10.0,
        session_ttl: float = 3600.0,
        max_sessions: int = 10000,
        max_requests: int | None = None,
        worker_ttl: float | None = None,
        memory_limit_mb: float | None = None,
        worker_env: Mapping[str, str] | Callable[[int], Mapping[str, str]] | None = None,
        backend: str = "process",
        start_method: str | None = None,
        start_timeout: float | None = 60.0,
        cancel_grace: float | None = 5.0,
        kill_grace: float = 1.0,
        shutdown_timeout: float | None = 5.0,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float | None = 10.0,
        quarantine_after: int | None = 5,
        quarantine_window: float = 60.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        ray_address: str | None = None,
        actor_options: Mapping[str, Any] | None = None,
    ) -> None:
        if size is None:
            size = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise errors.validation(Reason.INVALID_CONFIG, f"size must be a positive int, got {size!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise errors.validation(Reason.INVALID_CONFIG, f"max_queue must be an int >= 0, got {max_queue!r}")
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise errors.validation(Reason.INVALID_CONFIG, f"max_sessions must be a positive int, got {max_sessions!r}")
        self.affinity = parse_affinity(affinity, reason=Reason.INVALID_CONFIG)
        self.size = size
        self._timeout = check_timeout("timeout", timeout)
        self._queue_timeout = check_timeout("queue_timeout", queue_timeout)
        if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise errors.validation(
                Reason.INVALID_CONFIG, f"threads_per_worker must be a positive int, got {threads_per_worker!r}"
            )
        if threads_per_worker > 1 and isinstance(adapter, type) and not getattr(adapter, "thread_safe", False):
            raise errors.validation(
                Reason.INVALID_CONFIG,
                f"threads_per_worker={threads_per_worker} runs calls of one {adapter.__qualname__} instance at once on "
                "several threads, which it does not declare safe: set `thread_safe = True` on the class if it is, "
                "or use threads_per_worker=1",
            )
        self.threads_per_worker = threads_per_worker
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise errors.validation(Reason.INVALID_CONFIG, f"max_retries must be an int >= 0, got {max_retries!r}")
        self._max_retries = max_retries
        self._correlation_prefix = secrets.token_hex(4)  # generated correlation ids: "<prefix>-<n>"
        self._correlation_seq = itertools.count(1)
        self._tracer: tracing.CallTracer | None = None  # OpenTelemetry spans per call: see start()
        recycle = RecyclePolicy(
            _positive_int("max_requests", max_requests),
            _positive("worker_ttl", worker_ttl, allow_none=True),
            _positive("memory_limit_mb", memory_limit_mb, allow_none=True),
        )
        start_timeout = check_timeout("start_timeout", start_timeout, Reason.INVALID_CONFIG)
        options = BackendOptions(
            size=size,
            memory_limit_mb=memory_limit_mb,
            start_method=start_method,
            start_timeout=start_timeout,
            telemetry=on_event is not None or telemetry_log.isEnabledFor(logging.INFO),
            threads=threads_per_worker,
            ray_address=ray_address,
            actor_options=actor_options,
        )
        workers = create_backend(backend, adapter, adapter_args, worker_env, options)
        self._attachments = workers.attachments
        self._counters = Counters()
        sessions = SessionStore(_positive("session_ttl", session_ttl), max_sessions)
        if on_event is not None and not callable(on_event):
            raise errors.validation(Reason.INVALID_CONFIG, "on_event must be callable")
        observer = Observer(on_event)
        self._dispatcher = Dispatcher(max_queue, self._counters, sessions, self.affinity, recycle, observer)
        self._supervisor = Supervisor(
            self._dispatcher,
            workers,
            self._counters,
            size=size,
            # Waits that may be unbounded (None or inf); the rhythms of supervision may not.
            start_timeout=start_timeout,
            cancel_grace=check_timeout("cancel_grace", cancel_grace, Reason.INVALID_CONFIG),
            kill_grace=_positive("kill_grace", kill_grace),
            shutdown_timeout=check_timeout("shutdown_timeout", shutdown_timeout, Reason.INVALID_CONFIG),
            heartbeat_interval=_positive("heartbeat_interval", heartbeat_interval),
            heartbeat_timeout=check_timeout("heartbeat_timeout", heartbeat_timeout, Reason.INVALID_CONFIG),
            recycle=recycle,
            observer=observer,
            quarantine=Quarantine(
                _positive_int("quarantine_after", quarantine_after), _positive("quarantine_window", quarantine_window)
            ),
        )
        self._dispatcher.supervisor = self._supervisor
        self._tools: dict[str, ToolSpec] = {}
        self._state_lock = threading.Lock()
        self._state = "new"
        self._on_close: list[Callable[[], None]] = []  # run first when the pool closes (its gRPC servers' stop)
        self._finalizer = weakref.finalize(self, _shutdown, self._dispatcher, self._supervisor, self._on_close)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Pool:
        """Start every worker in parallel; return once all are ready (or raise why not)."""
        with self._state_lock:
            if self._state != "new":
                raise errors.validation(Reason.INVALID_CONFIG, f"a pool starts once (it is {self._state})")
            self._state = "starting"
        self._tracer = tracing.tracer()  # if OpenTelemetry is installed and configured by now
        self._dispatcher.open()
        try:
            self._supervisor.start()
        except BaseException:
            self.close()
            raise
        self._tools = {spec.name: spec for spec in self._supervisor.tools or ()}
        self._dispatcher.observer.flush()  # start-up's events have reached on_event and the log
        with self._state_lock:
            if self._state == "starting":
                self._state = "running"
        return self

    def close(self) -> None:
        """Refuse new calls, cancel running ones, run ``cleanup()`` in every worker, reap them all."""
        with self._state_lock:
            if self._state == "closed":
                return
            self._state = "closed"
        self._finalizer()

    def __enter__(self) -> Pool:
        return self.start() if self._state == "new" else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<snakepit.Pool size={self.size} {self._state}>"

    # -- the request-level calls: what the call methods (see _seam/calls.py) hand their request to --

    def run(self, request: CallRequest) -> Any:
        return self._call(request, False, run_execute)

    def run_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        check_callback(callback)
        return self._call(request, True, lambda exchange: run_stream(exchange, callback))

    def open_stream(self, request: CallRequest) -> Stream:
        return self._call(
            request,
            True,
            lambda exchange: Stream(exchange, lambda: self._counters.bump("errors"), self, self._restarter(request)),
            lasting=True,
        )

    def _restarter(self, request: CallRequest) -> Callable[[errors.SnakepitError, Exchange], Exchange | None]:
        """For a stream iterator: its call run again after an error, where :meth:`_retry_after`
        allows (None where it does not)."""

        def restart(error: errors.SnakepitError, exchange: Exchange) -> Exchange | None:
            context = exchange.context
            assert context is not None
            if not self._retry_after(error, exchange, request, context):
                return None
            time.sleep(context.retry.delay)
            return self._begin(request, True, context)

        return restart

    def _arestarter(self, request: CallRequest) -> Callable[[errors.SnakepitError, Exchange], Awaitable[Exchange | None]]:
        """:meth:`_restarter` for asyncio."""

        async def restart(error: errors.SnakepitError, exchange: Exchange) -> Exchange | None:
            context = exchange.context
            assert context is not None
            if not self._retry_after(error, exchange, request, context):
                return None
            await asyncio.sleep(context.retry.delay)
            return await self._abegin(request, True, context)

        return restart

    def _call(self, request: CallRequest, stream: bool, drive: Callable[[Exchange], Any], *, lasting: bool = False) -> Any:
        """Check the call, take a worker, send the call, and hand its exchange to ``drive``,
        counting it and its error; run it again where :meth:`_retry_after` allows. ``lasting``:
        ``drive`` returns what goes on with the call (a stream iterator), which ends it."""
        self._counters.bump("requests")
        context = self._context(request)
        while True:
            exchange = None
            try:
                exchange = self._begin(request, stream, context)
                outcome = drive(exchange)
            except errors.SnakepitError as error:
                if exchange is not None:
                    exchange.cancel()  # a no-op without a worker, or once the call has ended
                if self._retry_after(error, exchange, request, context):
                    time.sleep(context.retry.delay)
                    continue
                self._counters.bump("errors")
                context.end(error)
                raise
            except BaseException as error:
                if exchange is not None:
                    exchange.cancel()
                context.end(error)
                raise
            if not lasting:
                context.end()
            return outcome

    def _context(self, request: CallRequest) -> CallContext:
        """A call's correlation id (the caller's, or a new one) and trace span."""
        correlation_id = request.correlation_id
        if correlation_id is None:
            correlation_id = f"{self._correlation_prefix}-{next(self._correlation_seq)}"
        else:
            check_correlation_id(correlation_id)
        span = None if self._tracer is None else self._tracer.start(request.tool, correlation_id, request.session_id)
        return CallContext(correlation_id, span)

    def _begin(self, request: CallRequest, stream: bool, context: CallContext) -> Exchange:
        """Check the call, take a worker and send the call.

        The exchange exists before the checkout, so that it owns the worker from the moment the
        worker is assigned: whatever interrupts a step after that, the worker comes back.
        """
        call = self._prepare(request, stream, context)
        exchange = Exchange(self._dispatcher, call.tool, call.deadline, context)
        try:
            self._dispatcher.checkout(call.session_id, call.affinity, call.queue_deadline, call.deadline, exchange)
            if context.span is not None:
                context.span.running(exchange.handle.id)
            call.start(exchange)
        except BaseException:
            exchange.cancel()
            raise
        return exchange

    def _retry_after(
        self, error: errors.SnakepitError, exchange: Exchange | None, request: CallRequest, context: CallContext
    ) -> bool:
        """Whether a failed call runs again (``context.retry`` says when): only an idempotent
        tool's call whose worker died under it (not killed by the pool) before the caller got
        anything of it, outside a strict session, within ``max_retries`` and the call's
        deadline."""
        previous = context.retry
        attempt = 0 if previous is None else previous.attempt
        if (
            error.reason != Reason.WORKER_CRASHED
            or attempt >= self._max_retries
            or exchange is None
            or exchange.handle is None
            or exchange.chunks
            or exchange.handle.killed_on_purpose
        ):
            return False
        spec = self._tools.get(exchange.tool)
        if spec is None or not spec.idempotent:
            return False
        if request.session_id is not None:
            mode = self._dispatcher.mode_of(request.session_id, check_routing(request.session_id, request.affinity))
            if mode is not Affinity.HINT:  # its state died with its worker
                return False
        delay = RETRY_BACKOFF * 2**attempt
        if exchange.deadline is not None and time.monotonic() + delay >= exchange.deadline:
            return False
        self._counters.bump("retries")
        self._dispatcher.observer.emit(
            "call_retry",
            logging.WARNING,
            f"worker {exchange.handle.id} died under an idempotent call to {exchange.tool!r}; running it again in {delay * 1000:.0f} ms",
            tool=exchange.tool,
            worker_id=exchange.handle.id,
            attempt=attempt + 1,
            cause=error.details.get("cause"),
            delay=delay,
            correlation_id=context.correlation_id,
        )
        context.retry = Retry(attempt + 1, exchange.deadline, delay)
        return True

    # -- many calls ------------------------------------------------------------------------------

    def map(
        self,
        tool: str,
        iterable_of_args: Iterable[Mapping[str, Any]],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | Callable[[int, int | None], None] = False,
        chunksize: int | None = None,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> Iterator[Any]:
        """Run ``tool`` once per args dict and yield the results, keeping every worker busy.

        Results come in input order (or as completed with ``ordered=False``). The input is read
        lazily: an endless generator works, in bounded memory. Items travel in batches, sized
        automatically unless ``chunksize`` is given, pipelined so tiny tasks are not bound by
        round trips. A failing item raises its :class:`SnakepitError` at its position, unless
        ``return_exceptions=True`` yields it. ``progress=True`` shows a tqdm bar; a callable gets
        ``(done, total)``. ``timeout`` bounds each batch. The map takes every worker that is idle
        while its input lasts (or just the session's) and holds each until the input runs out.
        The map has one ``correlation_id`` (given, or generated), which its items' errors carry.
        """
        return mapping.run_map(
            *self._map_setup(
                tool,
                iterable_of_args,
                ordered,
                return_exceptions,
                progress,
                chunksize,
                session_id,
                affinity,
                timeout,
                correlation_id,
                sync=True,
            )
        )

    def amap(
        self,
        tool: str,
        iterable_of_args: Iterable[Mapping[str, Any]],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | Callable[[int, int | None], None] = False,
        chunksize: int | None = None,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> AsyncIterator[Any]:
        """:meth:`map` for asyncio: ``async for result in pool.amap(...)``."""
        return mapping.arun_map(
            *self._map_setup(
                tool,
                iterable_of_args,
                ordered,
                return_exceptions,
                progress,
                chunksize,
                session_id,
                affinity,
                timeout,
                correlation_id,
                sync=False,
            )
        )

    def _map_setup(
        self,
        tool: str,
        iterable_of_args: Iterable[Mapping[str, Any]],
        ordered: bool,
        return_exceptions: bool,
        progress: bool | Callable[[int, int | None], None],
        chunksize: int | None,
        session_id: str | None,
        affinity: Affinity | str | None,
        timeout: float | None,
        correlation_id: str | None,
        *,
        sync: bool,
    ) -> tuple[Any, ...]:
        spec = self._spec(tool)
        _positive_int("chunksize", chunksize)
        mode = check_routing(session_id, affinity)
        retries = self._max_retries if spec.idempotent else 0
        if retries and session_id is not None and self._dispatcher.mode_of(session_id, mode) is not Affinity.HINT:
            retries = 0  # a strict session's state died with its worker
        batch_timeout = self._timeout if timeout is None else check_timeout("timeout", timeout)
        context = self._context(
            CallRequest(tool, None, session_id, affinity, timeout, correlation_id)
        )  # checked: its span starts
        try:
            total: int | None = len(iterable_of_args)  # type: ignore[arg-type]
        except TypeError:
            total = None
        reporter = Reporter(progress, total, description=tool)
        engine = mapping.MapEngine(
            self._dispatcher,
            tool,
            iterable_of_args,
            ordered=ordered,
            chunksize=chunksize,
            timeout=batch_timeout,
            on_progress=reporter.update if reporter.active else None,
            on_items=lambda count: self._counters.bump("requests", count),
            on_timeout=lambda worker_id, items: self._map_timed_out(tool, worker_id, items),
            on_close=lambda engine: self._map_closed(engine, reporter),
            retries=retries,
            on_retry=lambda handle, items, info: self._map_retried(tool, handle, items, info, context.correlation_id),
            context=context,
        )

        # The engine owns the workers it is given from the moment they are assigned.
        def first() -> Any:
            queue_deadline = deadline_after(self._queue_timeout)
            if sync:
                return self._dispatcher.checkout(session_id, mode, queue_deadline, None, engine)
            return aio.checkout(self._dispatcher, session_id, mode, queue_deadline, None, engine)

        def more() -> Any:
            return None if session_id is not None else self._dispatcher.checkout_now(engine)

        return engine, first, more, return_exceptions

    def _map_retried(self, tool: str, handle: Any, items: int, info: dict[str, Any], correlation_id: str) -> None:
        self._counters.bump("retries", items)
        self._dispatcher.observer.emit(
            "call_retry",
            logging.WARNING,
            f"worker {handle.id} died under a map of idempotent {tool!r}; running its {items} item(s) again one by one",
            tool=tool,
            worker_id=handle.id,
            items=items,
            cause=info.get("cause"),
            correlation_id=correlation_id,
        )

    def _map_timed_out(self, tool: str, worker_id: int, items: int) -> None:
        """A map batch ran past its timeout: each of its items (and of the batches queued behind
        it, cancelled with it) counts as a timed-out call."""
        self._counters.bump("timeouts", items)
        self._dispatcher.observer.emit(
            "timeout",
            logging.WARNING,
            f"a batch of {tool!r} on worker {worker_id} exceeded its timeout",
            tool=tool,
            worker_id=worker_id,
            items=items,
        )

    def _map_closed(self, engine: mapping.MapEngine, reporter: Reporter) -> None:
        reporter.close()
        if engine.failed:
            self._counters.bump("errors", engine.failed)

    # -- asyncio ---------------------------------------------------------------------------------

    async def arun(self, request: CallRequest) -> Any:
        return await self._acall(request, False, aio.run_execute)

    async def _acall(self, request: CallRequest, stream: bool, drive: Callable[[Exchange], Awaitable[Any]]) -> Any:
        """:meth:`_call` for asyncio."""
        self._counters.bump("requests")
        context = self._context(request)
        while True:
            exchange = None
            try:
                exchange = await self._abegin(request, stream, context)
                outcome = await drive(exchange)
            except errors.SnakepitError as error:
                if self._retry_after(error, exchange, request, context):
                    await asyncio.sleep(context.retry.delay)
                    continue
                self._counters.bump("errors")
                context.end(error)
                raise
            except BaseException as error:
                context.end(error)
                raise
            context.end()
            return outcome

    async def arun_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        check_callback(callback)
        return await self._acall(request, True, lambda exchange: aio.run_stream(exchange, callback))

    def open_astream(self, request: CallRequest) -> AsyncStream:
        self._counters.bump("requests")
        context = self._context(request)
        return AsyncStream(
            self._abegin(request, True, context), lambda: self._counters.bump("errors"), self, self._arestarter(request), context
        )

    # -- sessions --------------------------------------------------------------------------------

    def session(
        self, session_id: str, *, affinity: Affinity | str | None = None, metadata: Mapping[str, str] | None = None
    ) -> Session[Stream, AsyncStream]:
        """A handle whose calls all carry ``session_id`` (and its ``affinity``, if given).

        Opens the session now, so ``session_quota_exceeded`` surfaces here; ``metadata`` (str to
        str) is kept with it, as :meth:`touch_session` returns it.
        """
        check_session_id(session_id)
        mode = None if affinity is None else parse_affinity(affinity)
        self._dispatcher.open_session(session_id, mode, check_metadata(metadata))
        return Session(self, session_id, mode)

    def touch_session(self, session_id: str) -> SessionInfo | None:
        """Keep a session alive (its ``session_ttl`` starts again) and describe it; ``None`` if
        there is no such session (never opened, closed, or expired)."""
        return self._dispatcher.touch_session(session_id)

    def close_session(self, session_id: str) -> bool:
        """Forget a session and its pin; whether there was one."""
        return self._dispatcher.close_session(session_id)

    def _session_worker(self, session_id: str) -> int | None:
        return self._dispatcher.session_worker(session_id)

    @property
    def serving(self) -> bool:
        """Whether the pool can take a call now: started, not closing, with a worker up (what a
        health probe asks)."""
        return self._dispatcher.serving

    async def _abegin(self, request: CallRequest, stream: bool, context: CallContext) -> Exchange:
        call = self._prepare(request, stream, context)
        exchange = Exchange(self._dispatcher, call.tool, call.deadline, context)
        try:
            await aio.checkout(self._dispatcher, call.session_id, call.affinity, call.queue_deadline, call.deadline, exchange)
            if context.span is not None:
                context.span.running(exchange.handle.id)
            if exchange.handle.conn.fits(len(call.frame)):  # the idle worker's pipe takes it at once
                call.start(exchange)
                return exchange
        except BaseException:
            exchange.cancel()
            raise
        await aio.start_off_loop(call.start, exchange)  # cancels the exchange itself if need be
        return exchange

    def _spec(self, tool: str) -> ToolSpec:
        spec = self._tools.get(tool)
        if spec is None:
            if self._dispatcher.closed:
                raise errors.pool_closed()
            raise errors.validation(Reason.TOOL_NOT_FOUND, f"unknown tool {tool!r}", tool=tool)
        return spec

    def _prepare(self, request: CallRequest, stream: bool, context: CallContext) -> PreparedCall:
        """Everything that can be checked and encoded before a worker is taken (a retry keeps
        the first attempt's deadline)."""
        tool, args, session_id, affinity, timeout, _ = request
        retry = context.retry
        spec = self._tools.get(tool) or self._spec(tool)
        if stream and not spec.supports_streaming:
            raise errors.validation(Reason.NOT_STREAMING, f"tool {tool!r} does not support streaming; use execute()", tool=tool)
        if type(args) is not dict:
            if args is None:
                args = {}
            elif not isinstance(args, Mapping):
                raise errors.validation(Reason.INVALID_ARGUMENTS, f"args must be a dict, got {type(args).__name__}", tool=tool)
            else:
                args = dict(args)
        mode = None if session_id is None and affinity is None else check_routing(session_id, affinity)
        limit = self._timeout if timeout is None else check_timeout("timeout", timeout)
        attachments = None
        if self._attachments is not None and not protocol.exact_args(args):  # pickled: large arrays go beside
            attachments = self._attachments()
        frame = protocol.call_frame(
            tool,
            args,
            stream,
            None if attachments is None else attachments.share,
            context.correlation_id,
            None if context.span is None else context.span.traceparent,
        )
        now = time.monotonic()
        queue_limit = self._queue_timeout
        deadline = None if limit is None else now + limit
        queue_deadline = None if queue_limit is None else now + queue_limit
        if retry is not None:
            deadline = retry.deadline
            if deadline is not None:
                queue_deadline = deadline if queue_deadline is None else min(queue_deadline, deadline)
        return PreparedCall(
            tool,
            frame,
            session_id,
            mode,
            queue_deadline,
            deadline,
            attachments if attachments is not None and attachments.fds else None,
        )

    # -- remote use ------------------------------------------------------------------------------

    def serve(
        self,
        address: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: Any = None,
        allow_pickle: bool = False,
        insecure: bool = False,
        max_message_mb: float = 64,
    ) -> Any:
        """Serve this pool over gRPC (Snakepit's bridge protocol) from this process.

        Returns the running :class:`snakepit.grpc.Server` (``.address``, ``.port`` -- port 0
        picks a free one -- ``.stop(grace=None)``, a context manager); closing the pool stops it.
        Loopback or ``unix:`` addresses only, unless ``token`` or mutual ``tls``
        (:class:`snakepit.grpc.TLS`) authenticate clients, or ``insecure=True``. Needs the
        ``grpc`` extra.
        """
        if self._dispatcher.closed:
            raise errors.pool_closed()
        # The one reference from the pool up to a front end: imported only by those who serve.
        from snakepit import grpc

        server = grpc.Server(
            self, address, token=token, tls=tls, allow_pickle=allow_pickle, insecure=insecure, max_message_mb=max_message_mb
        )
        self._on_close.append(lambda: server.stop(grace=0))
        return server

    # -- introspection ---------------------------------------------------------------------------

    def tools(self) -> list[ToolSpec]:
        """Every tool's spec: name, description, parameters, whether it streams."""
        return list(self._tools.values())

    def stats(self) -> dict[str, Any]:
        """Counters and per-worker state, as plain data."""
        counts = self._counters.snapshot()
        snapshot = self._dispatcher.snapshot()
        return {
            "requests": counts.get("requests", 0),
            "errors": counts.get("errors", 0),
            "queued": counts.get("queued", 0),
            "queue_timeouts": counts.get("queue_timeouts", 0),
            "timeouts": counts.get("timeouts", 0),
            "pool_saturated": counts.get("pool_saturated", 0),
            "restarts": counts.get("restarts", 0),
            "recycled": counts.get("recycled", 0),
            "recycled_by_reason": {
                reason: counts[f"recycled_{reason}"] for reason in RECYCLE_REASONS if counts.get(f"recycled_{reason}")
            },
            "hung": counts.get("hung", 0),
            "retries": counts.get("retries", 0),
            "deaths_by_cause": {cause: counts[f"deaths_{cause}"] for cause in DEATH_CAUSES if counts.get(f"deaths_{cause}")},
            "quarantined": self._supervisor.quarantine.snapshot(),
            "sessions": snapshot["sessions"],
            "size": self.size,
            "threads_per_worker": self.threads_per_worker,
            "workers": snapshot["workers"],
            "available": snapshot["available"],
            "busy": snapshot["busy"],
            "waiting": snapshot["waiting"],
            "worker_info": snapshot["worker_info"],
        }


RETRY_BACKOFF = 0.05  # seconds before a first retry; doubling for each further one


class Retry(NamedTuple):
    attempt: int  # how many times the call has been run again, this one included
    deadline: float | None  # the first attempt's
    delay: float


class PreparedCall:
    """A call checked and encoded, waiting for a worker."""

    __slots__ = ("tool", "frame", "session_id", "affinity", "queue_deadline", "deadline", "attachments")

    def __init__(
        self,
        tool: str,
        frame: bytearray,
        session_id: str | None,
        affinity: Affinity | None,
        queue_deadline: float | None,
        deadline: float | None,
        attachments: Any = None,
    ) -> None:
        self.tool = tool
        self.frame = frame  # without its id, which is drawn when it is sent
        self.session_id = session_id
        self.affinity = affinity
        self.queue_deadline = queue_deadline
        self.deadline = deadline
        self.attachments = attachments  # large arguments in shared memory; freed when dropped unsent

    def start(self, exchange: Exchange) -> None:
        """Send the call to the worker its exchange was given; its id is drawn now."""
        call_id = next(exchange.dispatcher.call_ids)
        protocol.stamp_call_id(self.frame, call_id)
        exchange.send(self.frame, call_id, self.attachments)


def _shutdown(dispatcher: Dispatcher, supervisor: Supervisor, on_close: list[Callable[[], None]]) -> None:
    """Close a pool: at ``close()``, when it is garbage collected, or at interpreter exit."""
    while on_close:
        on_close.pop()()
    dispatcher.close()
    supervisor.shutdown()

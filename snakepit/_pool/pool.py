"""The pool facade: its configuration and life cycle, the request-level calls under the call
methods users see (the calls themselves run in :mod:`.calling`), sessions, serve() and stats().

Life cycle: ``new`` -> ``starting`` -> ``running`` -> (``draining``) -> ``closed``. ``close()``
cancels whatever runs; ``close(wait=True)`` drains first: the dispatcher refuses new calls at
once, serves the queue and lets running calls end, and sets an event when none is left (the
closing thread waits on it, up to ``drain_timeout``); then the same shutdown runs. A drain is
ended early by a ``close()`` (it cancels), by garbage collection or by interpreter exit (the
shutdown sets the drain's event). A thread (or asyncio task) that holds one of the pool's calls
cannot drain it, since the drain would wait for that call: it is told so. The asyncio twins run
the blocking start and close on a thread of their own, so the event loop keeps running.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Self, TypeVar

from snakepit import _errors as errors
from snakepit import _tracing as tracing
from snakepit._adapter import ToolSpec
from snakepit._errors import Reason
from snakepit._functions import function_adapter, is_functions
from snakepit._observe import Observer, telemetry_log
from snakepit._pool import aio, mapping
from snakepit._pool.aio import AsyncStream
from snakepit._pool.calling import CallRunner
from snakepit._pool.config import AffinityName, BackendName, PoolConfig, StartMethod
from snakepit._pool.dispatcher import Counters, Dispatcher
from snakepit._pool.exchange import Stream, run_execute, run_stream
from snakepit._pool.futures import CallFuture, FutureDriver
from snakepit._pool.metering import CallMeter
from snakepit._pool.quarantine import Quarantine
from snakepit._pool.recycling import RECYCLE_REASONS, RecyclePolicy
from snakepit._pool.sessions import SessionStore
from snakepit._pool.stats import PoolStats
from snakepit._pool.supervisor import Supervisor
from snakepit._seam.affinity import Affinity, parse_affinity
from snakepit._seam.backend import DEATH_CAUSES, create_backend
from snakepit._seam.calls import Calls, Starmap
from snakepit._seam.launch import BackendOptions
from snakepit._seam.request import CallRequest, check_callback, check_session_id, map_items, map_total, tool_args
from snakepit._seam.session import Session, SessionInfo, check_metadata
from snakepit._seam.timing import check_timeout, deadline_after
from snakepit._streaming import StreamResult

if TYPE_CHECKING:
    from snakepit._pool.metrics import MetricsServer, PoolMetrics

__all__ = ["Pool"]

_numbering = itertools.count(1)  # pools in the order they are made: their default metrics label, pool-<n>
T = TypeVar("T")


class Pool(Calls["Stream", "AsyncStream"], Starmap):
    """A pool of worker processes, each hosting one instance of ``adapter``.

    Parameters:
        adapter: a :class:`~snakepit.BaseAdapter` subclass, or a ``"package.module:Class"`` string;
            or plain functions as tools: a function, a list of them, or a ``"package.module"``
            string (no colon: the module's ``@tool`` functions, or all its public functions if
            none is marked). Importable classes and functions travel by name (and workers start
            warm with their modules imported); others (``__main__``, notebooks, local
            definitions) by value with cloudpickle.
        size: number of worker processes; defaults to the number of CPUs available.
        affinity: what a call with a ``session_id`` does when its worker is busy or gone:
            ``"hint"`` (run elsewhere), ``"strict_queue"`` (wait for it) or ``"strict_fail_fast"``
            (fail with ``worker_busy``). Overridable per session and per call.
        adapter_args: keyword arguments for the adapter's constructor (in each worker).
        timeout: default per-call limit in seconds, covering time queued and time running;
            ``None`` or ``math.inf`` for no limit.
        max_retries: how many times a call of an ``@tool(idempotent=True)`` tool runs again on
            another worker when its worker dies under it (see *Crash barrier* in the failure semantics guide).
        threads_per_worker: calls each worker process runs at once, each on a thread of its own,
            over one adapter instance (which must say ``thread_safe = True``): capacity is
            ``size * threads_per_worker``. For I/O-bound tools and code that releases the GIL;
            see the *Thread profile* in the pool's settings guide.
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
            ``"ray"`` (Ray actors, on this machine or a cluster; see the Ray guide).
        start_method: how ``backend="process"`` starts a worker: ``"forkserver"`` (the default)
            forks it from a template process that has already imported snakepit and the
            adapter's module (a ``"module:Class"`` adapter, or a class importable by name), so a
            worker starts in milliseconds; ``"spawn"`` starts a fresh interpreter each time (what
            the template falls back to if it cannot serve). See *Start-up* in the pool's settings guide.
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
        quarantine_after: a worker slot that loses this many workers (crashes and failed
            starts, not workers the pool killed itself) within ``quarantine_window`` seconds is
            quarantined: its next worker starts after a back-off (1 s, doubling with each
            quarantine in a row, up to 60 s), while the other workers keep serving. ``None``:
            never.
        quarantine_window: the window of ``quarantine_after``, in seconds.
        setup: for plain functions: called once in each worker before its first call; what it
            returns is passed as the keyword ``state`` to the functions that declare a ``state``
            parameter (a model, a connection), which callers then do not pass.
        on_event: called with each event (worker start, exit, restart, recycle, hang, timeout,
            saturation) as a plain dict, for metrics exporters. See :mod:`snakepit._observe`.
    """

    def __init__(
        self,
        adapter: type | str | Callable[..., Any] | Sequence[Callable[..., Any]],
        *,
        size: int | None = None,
        affinity: Affinity | AffinityName = Affinity.HINT,
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
        backend: BackendName = "process",
        start_method: StartMethod | None = None,
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
        setup: Callable[[], Any] | None = None,
    ) -> None:
        config = PoolConfig(
            adapter,
            size,  # type: ignore[arg-type]  # None: the CPUs available, resolved by the check
            affinity,  # type: ignore[arg-type]  # a name or a mode, parsed by the check
            adapter_args,
            timeout,
            max_retries,
            threads_per_worker,
            max_queue,
            queue_timeout,
            session_ttl,
            max_sessions,
            max_requests,
            worker_ttl,
            memory_limit_mb,
            worker_env,
            backend,
            start_method,
            start_timeout,
            cancel_grace,
            kill_grace,
            shutdown_timeout,
            heartbeat_interval,
            heartbeat_timeout,
            quarantine_after,
            quarantine_window,
            on_event,
            ray_address,
            actor_options,
        )
        self.config = config
        hosted, hosted_args, preload = config.adapter, config.adapter_args, tuple[str, ...]()
        if is_functions(config.adapter):
            hosted, hosted_args, preload = function_adapter(config.adapter, setup, config.adapter_args)
        elif setup is not None:
            raise errors.validation(Reason.INVALID_CONFIG, "setup= applies to plain functions; an adapter class has initialize()")
        self.size = config.size
        self.affinity = config.affinity
        self.threads_per_worker = config.threads_per_worker
        # Workers send tools' telemetry while someone listens: on_event, the logger, or subscribers.
        listening = on_event is not None or telemetry_log.isEnabledFor(logging.INFO)
        self._subscribers = 0
        self._subscribers_lock = threading.Lock()
        workers = create_backend(
            config.backend,
            hosted,
            hosted_args,
            config.worker_env,
            BackendOptions(
                size=config.size,
                memory_limit_mb=config.memory_limit_mb,
                start_method=config.start_method,
                start_timeout=config.start_timeout,
                threads=config.threads_per_worker,
                ray_address=config.ray_address,
                actor_options=config.actor_options,
                preload=preload,
            ),
        )
        self._counters: Counters = Counters()
        recycle = RecyclePolicy(config.max_requests, config.worker_ttl, config.memory_limit_mb)
        observer = Observer(config.on_event)
        sessions = SessionStore(config.session_ttl, config.max_sessions)
        self._dispatcher: Dispatcher = Dispatcher(
            config.max_queue,
            self._counters,
            sessions,
            config.affinity,
            recycle,
            observer,
            config.queue_timeout,
            spread=config.threads_per_worker > 1,
        )
        self._supervisor: Supervisor = Supervisor(
            self._dispatcher,
            workers,
            self._counters,
            size=config.size,
            start_timeout=config.start_timeout,
            cancel_grace=config.cancel_grace,
            kill_grace=config.kill_grace,
            shutdown_timeout=config.shutdown_timeout,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            recycle=recycle,
            observer=observer,
            quarantine=Quarantine(config.quarantine_after, config.quarantine_window),
            telemetry=listening,
        )
        self._dispatcher.supervisor = self._supervisor
        self._runner: CallRunner = CallRunner(
            self._dispatcher,
            self._counters,
            timeout=config.timeout,
            queue_timeout=config.queue_timeout,
            max_retries=config.max_retries,
            attachments=workers.attachments,
            encodes=workers.encodes,
        )
        self._state_lock: threading.Lock = threading.Lock()
        self._state: str = "new"
        self._started = threading.Event()  # set once start() has ended (or will never run)
        self._drained: threading.Event | None = None  # a draining close's: set once no call is left, or at shutdown
        self._shut = threading.Event()  # set once the shutdown has run, whoever ran it
        self._on_close: list[Callable[[], None]] = []  # run first when the pool closes (its servers' stop)
        self._number = next(_numbering)
        self._metrics: PoolMetrics | None = None  # once enabled
        self._metrics_lock = threading.Lock()
        self._futures = FutureDriver(str(self._number))
        self._finalizer = weakref.finalize(
            self, _shutdown, self._dispatcher, self._supervisor, self._on_close, self._futures, self._shut
        )

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every worker in parallel; return once all are ready (or raise why not)."""
        with self._state_lock:
            if self._state != "new":
                raise errors.validation(Reason.INVALID_CONFIG, f"a pool starts once (it is {self._state})")
            self._state = "starting"
        self._runner.tracer = tracing.tracer()  # if OpenTelemetry is installed and configured by now
        # A close() from another thread meanwhile ends the start (pool_closed); the shutdown runs
        # here, after the start's last step, never beside it.
        try:
            self._dispatcher.open()
            self._supervisor.start()
            self._runner.tools = {spec.name: spec for spec in self._supervisor.tools or ()}
            self._dispatcher.observer.flush()  # start-up's events have reached on_event and the log
            with self._state_lock:
                closed = self._state != "starting"
                self._state = "closed" if closed else "running"
            if closed:
                raise errors.pool_closed()
        except BaseException:
            with self._state_lock:
                self._state = "closed"
            try:
                self._finalizer()
            finally:
                self._started.set()
            raise
        self._started.set()
        return self

    def close(self, *, wait: bool = False, drain_timeout: float | None = None) -> None:
        """Close the pool: refuse new calls (``pool_closed``), run ``cleanup()`` in every worker
        within ``shutdown_timeout``, reap them all.

        ``wait=False`` (the default) cancels at once every call waiting for a worker or running
        (their callers get ``pool_closed``). ``wait=True`` drains first, as
        ``Executor.shutdown(wait=True)`` does: new calls are refused at once, but calls already
        queued still get workers and run, and running ones (streams and a map's batches sent
        already included) finish, for up to ``drain_timeout`` seconds (``None``: as long as they
        take); what is left then is cancelled as by ``close()``. A ``close()`` from another
        thread during a drain cancels at once; a ``close(wait=True)`` joins it, waiting up to its
        own ``drain_timeout``. A thread cannot drain the pool while it holds one of the pool's
        calls (from a stream's callback, or inside a stream's or a map's loop), nor on a running
        event loop (use :meth:`aclose`): ``invalid_arguments``.

        While another thread starts the pool, that start ends with ``pool_closed`` and close()
        returns once the pool is shut down.
        """
        limit = _drain_limit(wait, drain_timeout)
        if wait and _loop_running():
            raise errors.validation(
                Reason.INVALID_ARGUMENTS,
                "close(wait=True) would block the running event loop, and the calls its tasks run could not "
                "finish: use 'await pool.aclose(wait=True)'",
            )
        self._close(wait, limit, threading.get_ident())

    def _close(self, wait: bool, limit: float | None, caller: object) -> None:
        """close() for a ``caller``: a thread's ident, or the asyncio task behind aclose()."""
        with self._state_lock:
            state = self._state
            if wait and state in ("running", "draining") and self._dispatcher.holds(caller):
                raise errors.validation(
                    Reason.INVALID_ARGUMENTS,
                    "close(wait=True) from inside one of this pool's calls (a stream's callback, a stream's "
                    "or a map's loop) would wait for that call, which cannot go on until close() returns: "
                    "call close() (which cancels) or drain from elsewhere",
                )
            if wait and state == "running":
                self._state = state = "draining"
                self._drained = self._dispatcher.drain()
            elif wait and state == "draining":
                pass  # join the drain under way, for this call's own drain_timeout
            elif state != "closed":
                self._state = "closed"
                if state != "starting":
                    self._started.set()
            drained = self._drained if state == "draining" else None
        if state == "starting":
            self._supervisor.abort_start()
        try:
            if drained is not None and wait:
                _wait_for(drained, deadline_after(limit))
        finally:  # drained, out of time, or interrupted (Ctrl-C): what is left is cancelled
            if drained is not None:
                with self._state_lock:
                    self._state = "closed"
            self._started.wait()  # a start under way shuts the pool down itself
            self._finalizer()  # the shutdown; at once if another thread runs it...
        if drained is not None and wait:
            self._shut.wait()  # ...which a drain's close(wait=True) waits for

    def __enter__(self) -> Self:
        return self.start() if self._state == "new" else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- life cycle, for asyncio -----------------------------------------------------------------

    async def astart(self) -> Self:
        """:meth:`start` without blocking the event loop: it runs on a thread of its own. If the
        awaiting task is cancelled, the pool is closed (the start ends with it) before the
        cancellation goes on: no half-started pool is left behind."""
        starting = _off_loop(self.start)
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            await _to_the_end(_off_loop(self.close))
            await _to_the_end(starting)
            raise
        return self

    async def aclose(self, *, wait: bool = False, drain_timeout: float | None = None) -> None:
        """:meth:`close` without blocking the event loop, with the same options; the other tasks'
        calls go on meanwhile (a drain waits for them). A task cannot drain the pool while it
        holds one of its calls (from an ``aexecute_stream`` callback, inside an ``astream`` or
        ``amap`` loop): ``invalid_arguments``. If the awaiting task is cancelled, the close
        goes on, as a ``close()`` that cancels what a drain still waits for, and is awaited
        before the cancellation goes on."""
        limit = _drain_limit(wait, drain_timeout)
        closing = _off_loop(self._close, wait, limit, asyncio.current_task())
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await _to_the_end(_off_loop(self.close))
            await _to_the_end(closing)
            raise

    async def __aenter__(self) -> Self:
        return await self.astart() if self._state == "new" else self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<snakepit.Pool size={self.size} {self._state}>"

    # -- the request-level calls: what the call methods (see _seam/calls.py) hand their request to --

    def run(self, request: CallRequest) -> Any:
        return self._runner.call(request, False, run_execute)

    def run_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        check_callback(callback)
        return self._runner.call(request, True, lambda exchange: run_stream(exchange, callback))

    def open_stream(self, request: CallRequest) -> Stream:
        return self._runner.call(
            request,
            True,
            lambda exchange: Stream(exchange, lambda: self._counters.bump("errors"), self, self._runner.restarter(request)),
            lasting=True,
        )

    # -- many calls ------------------------------------------------------------------------------

    def map(
        self,
        tool: str,
        iterable_of_args: Iterable[Any],
        /,
        *,
        param: str | None = None,
        total: int | None = None,
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

        Each item is an args dict, or with ``param="row"`` the value of the tool's parameter
        ``row`` (``{"row": item}``); see :meth:`starmap` for tuples. ``total`` is how many items
        there are, for the progress bar of an input that cannot say (a generator).
        """
        total = map_total(iterable_of_args, total)
        return mapping.run_map(
            *self._runner.map_setup(
                tool,
                map_items(iterable_of_args, param),
                total,
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
        iterable_of_args: Iterable[Any],
        /,
        *,
        param: str | None = None,
        total: int | None = None,
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
        total = map_total(iterable_of_args, total)
        return mapping.arun_map(
            *self._runner.map_setup(
                tool,
                map_items(iterable_of_args, param),
                total,
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

    def _parameter_names(self, tool: str) -> list[str]:
        return [parameter.name for parameter in self._runner.spec(tool).parameters]

    # -- futures ---------------------------------------------------------------------------------

    def submit(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        **tool_kwargs: Any,
    ) -> Future[Any]:
        """:meth:`execute` as a :class:`concurrent.futures.Future`, for ``as_completed``,
        ``wait`` and callbacks: its result is what ``execute`` returns, its exception what it
        raises. No thread per call: the pool's futures are driven and completed (their
        done-callbacks run) on one thread of the pool's. ``future.cancel()`` withdraws a call
        still waiting for a worker; :meth:`cancel` cancels a running one."""
        request = CallRequest(tool, tool_args(args, tool_kwargs), session_id, affinity, timeout, correlation_id)
        runner = self._runner
        return self._futures.spawn(CallFuture(), lambda running: runner.acall(request, False, aio.run_execute, running))

    def cancel(self, future: Future[Any]) -> bool:
        """Cancel the call of a future from :meth:`submit`, waiting or running (as a cancelled
        task cancels its call: the tool is interrupted in its worker); its future then raises
        :class:`concurrent.futures.CancelledError`. False if it had finished already."""
        return self._futures.cancel(future)

    # -- asyncio ---------------------------------------------------------------------------------

    async def arun(self, request: CallRequest) -> Any:
        return await self._runner.acall(request, False, aio.run_execute)

    async def arun_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        check_callback(callback)
        return await self._runner.acall(request, True, lambda exchange: aio.run_stream(exchange, callback))

    def open_astream(self, request: CallRequest) -> AsyncStream:
        self._counters.bump("requests")
        context = self._runner.context(request)
        return AsyncStream(
            self._runner.abegin(request, True, context),
            lambda: self._counters.bump("errors"),
            self,
            self._runner.arestarter(request),
            context,
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
        check_session_id(session_id)
        return self._dispatcher.touch_session(session_id)

    def close_session(self, session_id: str) -> bool:
        """Forget a session and its pin; whether there was one."""
        check_session_id(session_id)
        return self._dispatcher.close_session(session_id)

    def _session_worker(self, session_id: str) -> int | None:
        return self._dispatcher.session_worker(session_id)

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Have ``callback`` receive every event from now on, as ``on_event`` does (the same
        dicts, on the same delivery thread; an exception it raises is logged, and the others
        still get the event), tools' telemetry included. Returns what unsubscribes it (once;
        again does nothing).

        Workers send tools' telemetry only while someone listens: the first subscriber switches
        it on in every worker, the last one to leave switches it off again (unless the pool was
        created with ``on_event``, or with the ``snakepit.telemetry`` logger at INFO)."""
        unsubscribe = self._dispatcher.observer.subscribe(callback)
        with self._subscribers_lock:
            self._subscribers += 1
            if self._subscribers == 1:
                self._supervisor.submit(self._supervisor.listen, True)
        left = False

        def leave() -> None:
            nonlocal left
            with self._subscribers_lock:
                if left:
                    return
                left = True
                unsubscribe()
                self._subscribers -= 1
                if self._subscribers == 0:
                    self._supervisor.submit(self._supervisor.listen, False)

        return leave

    @property
    def serving(self) -> bool:
        """Whether the pool can take a call now: started, not closing, with a worker up (what a
        health probe asks)."""
        return self._dispatcher.serving

    # -- remote use ------------------------------------------------------------------------------

    def serve(
        self,
        address: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: Any = None,
        allow_pickle: bool = False,
        insecure: bool = False,
        max_message_mb: float = 100,
    ) -> Any:
        """Serve this pool over gRPC (Snakepit's bridge protocol) from this process.

        Returns the running :class:`snakepit.grpc.Server` (``.address``, ``.port`` -- port 0
        picks a free one -- ``.stop(grace=None)``, a context manager); closing the pool stops it.
        Loopback or ``unix:`` addresses only, unless ``token`` or mutual ``tls``
        (:class:`snakepit.grpc.TLS`) authenticate clients, or ``insecure=True``. Needs the
        ``grpc`` extra.
        """
        if self._dispatcher.closed or self._dispatcher.draining:
            raise errors.pool_closed(self._dispatcher.draining and not self._dispatcher.closed)
        # The one reference from the pool up to a front end: imported only by those who serve.
        from snakepit import grpc

        try:
            serving = grpc.Server
        except ModuleNotFoundError as exc:  # the grpc extra is not installed
            raise errors.validation(Reason.INVALID_CONFIG, str(exc)) from None
        server = serving(
            self, address, token=token, tls=tls, allow_pickle=allow_pickle, insecure=insecure, max_message_mb=max_message_mb
        )
        self._on_close.append(lambda: server.stop(grace=0))
        return server

    def enable_metrics(self, label: str | None = None, *, registry: Any = None) -> PoolMetrics:
        """Record Prometheus metrics for this pool from now on, and return them (again: the
        same ones). Needs the ``metrics`` extra (``prometheus_client``).

        ``label`` is the value of every series' ``pool`` label (default ``pool-<n>``, this being
        the process's n-th pool); ``registry`` (e.g. ``prometheus_client.REGISTRY``): be scraped
        from it too, beside any other pools there (with labels of their own). What
        :meth:`stats` counts is read at each scrape; per-tool outcomes and times are recorded
        by calls made from now on. See *Prometheus metrics* in the observability guide.
        """
        if self._dispatcher.closed:
            raise errors.pool_closed()
        from snakepit._pool.metrics import PoolMetrics  # prometheus_client: only for those who enable metrics

        if label is not None and (not isinstance(label, str) or not label):
            raise errors.validation(Reason.INVALID_CONFIG, f"a pool's metrics label must be a non-empty str, got {label!r}")
        with self._metrics_lock:
            metrics = self._metrics
            if metrics is None:
                metrics = PoolMetrics(self, label or f"pool-{self._number}", CallMeter(self._runner))
                self._metrics = metrics
                self._runner.meter = metrics.meter
                self._on_close.append(metrics.retire)
            elif label is not None and label != metrics.label:
                raise errors.validation(
                    Reason.INVALID_CONFIG, f"this pool's metrics are named {metrics.label!r} already, not {label!r}", label=label
                )
        if registry is not None:
            metrics.register(registry)
        return metrics

    def serve_metrics(
        self, address: str = "127.0.0.1:9464", *, token: str | None = None, insecure: bool = False, label: str | None = None
    ) -> MetricsServer:
        """Serve this pool's Prometheus metrics over HTTP at ``/metrics`` (enabling them, as
        :meth:`enable_metrics` does with ``label``), from a thread of this process.

        Returns the running :class:`snakepit.MetricsServer` (``.address``, ``.port`` -- port 0
        picks a free one -- ``.url``, ``.stop()``, a context manager); closing the pool stops it.
        A loopback address only, unless ``token`` (each scrape then sends ``Authorization:
        Bearer <token>``, else 401) or ``insecure=True``. A port another server holds is
        ``invalid_config`` at once. Needs the ``metrics`` extra.
        """
        metrics = self.enable_metrics(label)
        from snakepit._pool.metrics import MetricsServer

        server = MetricsServer(metrics.registry, address, token=token, insecure=insecure)
        self._on_close.append(server.stop)
        if self._dispatcher.closed:  # closed meanwhile: its close may have run before the append
            server.stop()
            raise errors.pool_closed()
        return server

    # -- introspection ---------------------------------------------------------------------------

    def tools(self) -> list[ToolSpec]:
        """Every tool's spec: name, description, parameters, whether it streams."""
        return list(self._runner.tools.values())

    def stats(self) -> PoolStats:
        """Counters and per-worker state, as plain data (a dict; its keys: :class:`snakepit.PoolStats`)."""
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
            "telemetry_dropped": self._dispatcher.observer.telemetry_dropped,
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


def _shutdown(
    dispatcher: Dispatcher,
    supervisor: Supervisor,
    on_close: list[Callable[[], None]],
    futures: FutureDriver,
    done: threading.Event,
) -> None:
    """Close a pool: at ``close()``, when it is garbage collected, or at interpreter exit."""
    try:
        while on_close:
            on_close.pop()()
        dispatcher.close()  # ends a drain under way too
        supervisor.shutdown()
        futures.close()  # its calls have ended, each with its outcome or pool_closed
    finally:
        done.set()


def _drain_limit(wait: bool, drain_timeout: Any) -> float | None:
    """``drain_timeout`` checked: seconds (zero: cancel at once), or ``None`` for no limit."""
    if not isinstance(wait, bool):
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"wait must be True or False, got {wait!r}")
    if drain_timeout is None:
        return None
    if not wait:
        raise errors.validation(Reason.INVALID_ARGUMENTS, "drain_timeout applies to a draining close: pass wait=True with it")
    if isinstance(drain_timeout, bool) or not isinstance(drain_timeout, (int, float)) or not drain_timeout >= 0:
        raise errors.validation(
            Reason.INVALID_ARGUMENTS, f"drain_timeout must be a number of seconds (0 or more) or None, got {drain_timeout!r}"
        )
    return 0.0 if drain_timeout == 0 else check_timeout("drain_timeout", drain_timeout)


def _wait_for(event: threading.Event, deadline: float | None) -> None:
    """Until ``event`` is set or ``deadline`` passes (an Event waits on a condition: no polling)."""
    while not event.is_set():
        if deadline is None:
            event.wait()
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        event.wait(min(remaining, threading.TIMEOUT_MAX))


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _off_loop(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` on a thread of its own (not the loop's executor, which other work may fill),
    its outcome in a future of the running loop. A daemon thread: at interpreter exit the pool's
    finalizer closes the pool anyway."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            outcome: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(_settle, future, outcome)
        except RuntimeError:  # the loop has closed: nobody awaits it any more
            pass

    threading.Thread(target=run, name="snakepit-lifecycle", daemon=True).start()
    return future


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


async def _to_the_end(future: asyncio.Future[Any]) -> None:
    """Await ``future`` to its end through further cancellations (it is the clean-up after one),
    which are passed on after it. Its outcome is not the awaiting task's: an error is retrieved
    (never reported as unretrieved), not raised."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break
    if not future.cancelled():
        future.exception()
    if cancelled:
        raise asyncio.CancelledError

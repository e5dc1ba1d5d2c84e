"""``snakepit.Executor``: a :class:`concurrent.futures.Executor` over a pool of long-lived workers.

``executor.submit(fn, *args, **kwargs)`` runs ``fn`` in a worker process and returns a
:class:`concurrent.futures.Future`; ``map``, ``shutdown`` and the context manager behave as
``concurrent.futures`` defines them, so it goes wherever an Executor is taken
(``loop.run_in_executor``, ``as_completed``, ``wait``). Underneath is a :class:`~snakepit.Pool`
of the built-in :class:`CallableAdapter`, with the pool's supervision: a worker that crashes
fails the one future it was running (``worker_crashed``: the executor is never "broken"), a call
past ``Executor(timeout=)`` is cancelled in its worker, and workers are recycled after
``max_tasks_per_child`` calls.

Functions travel with cloudpickle (lambdas, closures and notebook functions work), pickled once
per function object and unpickled once per worker. ``future.result()`` raises the function's own
exception, its ``__cause__`` the worker's traceback, or a :class:`~snakepit.ToolError` if it will
not unpickle.

The adapter runs any pickled callable it is sent: it is never served over gRPC (its tools are
named ``snakepit.*``, which a server refuses) and never part of a user's pool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import os
import pickle
import queue
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from snakepit import _errors as errors
from snakepit._adapter import BaseAdapter, tool
from snakepit._errors import Reason

if TYPE_CHECKING:
    from snakepit._pool.futures import CallFuture
    from snakepit._pool.pool import Pool

__all__ = ["Executor", "CallableAdapter"]

CALLABLE_ADAPTER = "snakepit.executor:CallableAdapter"
CALL = "snakepit.call"
CALL_CHUNK = "snakepit.call_chunk"
_CACHED = 256  # functions a worker keeps unpickled


class CallableAdapter(BaseAdapter):
    """Runs the pickled callables an :class:`Executor` sends (see the module's docstring)."""

    thread_safe = True  # as safe as the functions it runs

    def __init__(self, initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> None:
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._functions: collections.OrderedDict[int, Callable[..., Any]] = collections.OrderedDict()

    def initialize(self) -> None:
        if self._initializer is not None:
            _rebased(self._initializer)(*self._initargs)

    def _function(self, fn: bytes, key: int) -> Callable[..., Any]:
        cached = self._functions.get(key)
        if cached is not None:
            return cached
        import cloudpickle

        function: Callable[..., Any] = _rebased(cloudpickle.loads(fn))
        if key:
            self._functions[key] = function
            if len(self._functions) > _CACHED:
                self._functions.popitem(last=False)
        return function

    @tool(name=CALL)
    def call(self, fn: bytes, key: int, args: Any, kwargs: Any) -> Any:
        return self._function(fn, key)(*args, **kwargs)

    @tool(name=CALL_CHUNK)
    def call_chunk(self, fn: bytes, key: int, chunk: bytes) -> list[Any]:
        function = self._function(fn, key)
        return [function(*args) for args in pickle.loads(chunk)]


# Functions sent by value (from __main__, a notebook) each arrive with a copy of their module's
# globals of their own: a global the initializer sets would be invisible to the functions
# submitted. In a worker, each such module's functions share one namespace instead, as they
# would in a process forked from the owner (a name the worker has set keeps its value).
_namespaces: dict[str, dict[str, Any]] = {}


def _rebased(function: Any) -> Any:
    """``function`` on its module's shared namespace, if it came by value (see above)."""
    if not isinstance(function, types.FunctionType):
        return function
    module = sys.modules.get(function.__module__)
    if module is not None and function.__globals__ is vars(module):
        return function  # travelled by reference: its module is imported here
    namespace = _namespaces.setdefault(function.__module__, {})
    if function.__globals__ is namespace:
        return function
    for name, value in function.__globals__.items():
        if name not in namespace:
            namespace[name] = value
            if isinstance(value, types.FunctionType) and value.__module__ == function.__module__:
                namespace[name] = _rebased(value)  # a helper it calls sees the same globals
    rebuilt = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__)
    rebuilt.__kwdefaults__ = function.__kwdefaults__
    rebuilt.__qualname__ = function.__qualname__
    rebuilt.__module__ = function.__module__
    rebuilt.__doc__ = function.__doc__
    rebuilt.__annotations__ = function.__annotations__
    rebuilt.__dict__.update(function.__dict__)
    return rebuilt


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` whose workers are a snakepit pool's processes.

    Parameters:
        max_workers: worker processes (default: the CPUs available).
        initializer: ``initializer(*initargs)`` runs in every worker as it starts,
            replacements included; if it raises, the futures waiting fail with
            ``worker_start_failed``.
        initargs: the arguments of ``initializer``.
        timeout: each call's limit in seconds (``None``: none); a call past it is cancelled in
            its worker and its future raises :class:`snakepit.TimeoutError`.
        max_tasks_per_child: a worker is replaced after this many calls (the pool's
            ``max_requests``).
        pool_options: any other :class:`~snakepit.Pool` option (``worker_env``,
            ``memory_limit_mb``, ``start_method``, ``backend``...).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        timeout: float | None = None,
        max_tasks_per_child: int | None = None,
        **pool_options: Any,
    ) -> None:
        from snakepit._pool.pool import Pool

        if initializer is not None and not callable(initializer):
            raise errors.validation(Reason.INVALID_CONFIG, "initializer must be callable")
        if "mp_context" in pool_options:
            raise errors.validation(
                Reason.INVALID_CONFIG,
                "mp_context: workers are started by snakepit; choose how with start_method='forkserver' or 'spawn'",
            )
        taken = {"size", "max_requests", "adapter_args", "setup"} & set(pool_options)
        if taken:
            raise errors.validation(
                Reason.INVALID_CONFIG,
                f"{', '.join(sorted(taken))}: the Executor's own (max_workers, max_tasks_per_child, initializer)",
            )
        self._pool: Pool = Pool(
            CALLABLE_ADAPTER,
            size=max_workers,
            adapter_args={"initializer": initializer, "initargs": tuple(initargs)},
            timeout=timeout,
            max_requests=max_tasks_per_child,
            queue_timeout=None,  # a future waits for a worker as long as it takes
            **pool_options,
        )
        self._window = 2 * self._pool.size * self._pool.threads_per_worker  # calls handed to the pool at once
        self._lock = threading.Lock()
        # (future, tool, its arguments, the function's name) of calls not yet handed to the pool
        self._pending: collections.deque[tuple[CallFuture, str, dict[str, Any], str]] = collections.deque()
        self._outstanding: set[concurrent.futures.Future[Any]] = set()
        self._maps: set[concurrent.futures.Future[Any]] = set()  # pipelined maps under way
        self._in_flight = 0
        self._feeding = False
        self._ready = False  # the pool has started
        self._broken: BaseException | None = None  # why it could not
        self._shut_down = False
        self._pickles: weakref.WeakKeyDictionary[Any, tuple[int, bytes]] = weakref.WeakKeyDictionary()
        self._keys = itertools.count(1)
        self._starting = threading.Thread(target=self._start, name="snakepit-executor-start", daemon=True)
        self._starting.start()
        self._pid = os.getpid()
        _live.add(self)

    # -- concurrent.futures.Executor ---------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; its future."""
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        return self._submit(CALL, fn, {"args": list(args), "kwargs": kwargs})  # a list: msgpack carries it exactly

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """``map(fn, *iterables)`` run in the workers, as ``concurrent.futures`` defines it: every
        call is submitted at once; the results come in order, each raising its call's
        exception; ``timeout`` bounds the whole iteration (``TimeoutError``). ``chunksize``
        calls travel together (by default, as many as the measured rate suggests): tiny calls
        are not bound by round trips, each worker having its next batch while it runs one."""
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        end = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        if self._pool.config.max_requests is None:
            return self._pipelined(fn, list(calls), end, chunksize)
        # Each call counts toward max_tasks_per_child as it ends: futures, one call (or chunk) each.
        if chunksize == 1:
            futures = [self._submit(CALL, fn, {"args": list(args), "kwargs": {}}) for args in calls]
        else:
            # A chunk travels pickled in one piece: checking that msgpack would carry each of
            # its values exactly costs more than pickling them (large arrays are for submit()).
            futures = [self._submit(CALL_CHUNK, fn, {"chunk": _pickled_chunk(chunk)}) for chunk in _chunks(calls, chunksize)]
        return _results(futures, end, chunked=chunksize > 1)

    def _pipelined(
        self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], end: float | None, chunksize: int
    ) -> Iterator[Any]:
        """``map``'s calls as one ``pool.amap`` on the futures thread, started now: the calls
        travel in batches (``chunksize`` calls each, else sized from the measured rate), each
        worker's next batch queued while it runs one, so tiny calls are not bound by round trips.
        A batch is one call when calls have a timeout, which bounds a batch. A crash fails only
        the calls its worker held."""
        from snakepit._pool.futures import CallFuture

        key, pickled = self._pickled(fn)
        pool = self._pool
        batch = 1 if pool.config.timeout is not None else None
        tool_name = CALL if chunksize == 1 else CALL_CHUNK
        results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._starting.join()  # the workers are up (a map starts at once, as it is made), or failed
        if self._broken is not None:
            raise _again(self._broken)

        async def drive(running: Callable[[], bool]) -> None:
            try:
                if not running():
                    return
                items: Iterator[dict[str, Any]]
                if chunksize == 1:
                    items = ({"fn": pickled, "key": key, "args": list(args), "kwargs": {}} for args in calls)
                else:  # a chunk is one item, pickled in one piece (cheaper than checking its values for msgpack)
                    items = ({"fn": pickled, "key": key, "chunk": _pickled_chunk(chunk)} for chunk in _chunks(calls, chunksize))
                async for value in pool.amap(tool_name, items, return_exceptions=True, chunksize=batch):
                    results.put(value)
            except BaseException as exc:
                results.put(_Failed(exc))
                raise
            finally:
                results.put(_END)

        future = CallFuture()
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._outstanding.add(future)
            self._maps.add(future)
        future.add_done_callback(self._map_done)
        try:
            pool._futures.spawn(future, drive)
        except BaseException:
            future.cancel()
            self._map_done(future)
            raise
        return _streamed(results, future, pool, end, chunked=chunksize > 1, label=(_label(fn), tool_name))

    def _map_done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._outstanding.discard(future)
            self._maps.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with ``cancel_futures`` cancel those not yet handed to a worker;
        with ``wait`` return once every other has finished and the workers are gone (else at
        once, the workers going once the calls have finished)."""
        with self._lock:
            self._shut_down = True
            dropped = list(self._pending) if cancel_futures else []
            maps = list(self._maps) if cancel_futures else []
            if cancel_futures:
                self._pending.clear()
        from snakepit._pool.futures import notify_cancelled

        for future, *_ in dropped:
            future.cancel()
            notify_cancelled(future)
        for map_future in maps:  # a map's calls not yet run go with it (those running are cancelled too)
            self._pool.cancel(map_future)
        on_our_thread = threading.current_thread().name.startswith("snakepit-futures-")
        if wait and not on_our_thread:
            self._finish()
        else:
            threading.Thread(target=self._finish, name="snakepit-executor-shutdown", daemon=True).start()

    # -- the calls ---------------------------------------------------------------------------------

    def _submit(self, tool_name: str, fn: Callable[..., Any], args: dict[str, Any]) -> CallFuture:
        from snakepit._pool.futures import CallFuture

        key, pickled = self._pickled(fn)
        args = {"fn": pickled, "key": key, **args}
        future = CallFuture()
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            broken = None if self._broken is None else _again(self._broken)
            if broken is None:
                self._outstanding.add(future)
                self._pending.append((future, tool_name, args, _label(fn)))
            feed = self._claim_feed()
        if broken is not None:  # the workers could not start: nor will this call
            future.set_running_or_notify_cancel()
            future.set_exception(broken)
            return future
        future.add_done_callback(self._outstanding.discard)
        if feed:
            self._pool._futures.call_soon(self._feed)
        return future

    def _pickled(self, fn: Callable[..., Any]) -> tuple[int, bytes]:
        """``fn`` pickled, once per function object (key 0: not cached, it cannot be weakly referenced)."""
        try:
            return self._pickles[fn]
        except KeyError:
            pass
        except TypeError:  # not weakly referenceable: pickled every time
            return 0, _dumps(fn)
        entry = (next(self._keys), _dumps(fn))
        self._pickles[fn] = entry
        return entry

    def _start(self) -> None:
        try:
            self._pool.start()
        except BaseException as exc:
            with self._lock:
                self._broken = exc
                pending = list(self._pending)
                self._pending.clear()
            for future, *_ in pending:
                if future.set_running_or_notify_cancel():
                    future.set_exception(_again(exc))
            return
        with self._lock:
            self._ready = True
            feed = self._claim_feed()
        if feed:
            self._pool._futures.call_soon(self._feed)

    def _claim_feed(self) -> bool:
        """(Lock held.) Whether the caller is to run :meth:`_feed`: calls wait, the pool has
        started, and no feed is under way or scheduled (this one is, from now on)."""
        feed = self._ready and bool(self._pending) and not self._feeding
        self._feeding = self._feeding or feed
        return feed

    def _feed(self) -> None:
        """On the pool's futures thread: hand waiting calls to the pool, up to the window."""
        from snakepit._pool import aio
        from snakepit._pool.futures import notify_cancelled

        runner = self._pool._runner
        driver = self._pool._futures
        while True:
            with self._lock:
                if self._in_flight >= self._window or not self._pending:
                    self._feeding = False
                    return
                future, tool_name, args, label = self._pending.popleft()
                if future.cancelled():
                    notify_cancelled(future)
                    continue
                self._in_flight += 1
            request = _request(tool_name, args)

            async def run(running: Callable[[], bool], request: Any = request, label: str = label) -> Any:
                try:
                    return await runner.acall(request, False, aio.run_execute, running)
                except errors.ToolError as error:
                    exception = _unwrapped(error)
                    raise exception from exception.__cause__
                except errors.SnakepitError as error:  # a timeout, a crash...: named by its function
                    raise _named(error, label, request.tool) from error.__cause__
                finally:
                    with self._lock:
                        self._in_flight -= 1
                        feed = self._claim_feed()
                    if feed:
                        self._feed()

            driver.start_on_loop(future, run)

    def _finish(self) -> None:
        """After shutdown: wait for every call submitted (none is added any more), then close."""
        self._starting.join()
        while True:
            with self._lock:
                left = list(self._outstanding)
            if not left:
                break
            concurrent.futures.wait(left)
        self._pool.close()

    def __repr__(self) -> str:
        return f"<snakepit.Executor max_workers={self._pool.size}{' shut down' if self._shut_down else ''}>"


# As concurrent.futures promises: the program does not exit until the calls submitted have run,
# whether or not shutdown() was called (with or without waiting). Run at the threading module's
# exit, before atexit's handlers (which close the pools), as concurrent.futures' own is.
_live: weakref.WeakSet[Executor] = weakref.WeakSet()


def _at_exit() -> None:
    for executor in list(_live):
        if executor._pid != os.getpid():  # a child forked from the owner (multiprocessing's fork) exits: not its calls
            continue
        with executor._lock:
            executor._shut_down = True
        executor._finish()


threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # what concurrent.futures.process uses


def _again(error: BaseException) -> BaseException:
    """A fresh copy of a stored error to raise (raising one object again and again would pile
    its tracebacks up)."""
    return errors.build_error(**error.to_dict()) if isinstance(error, errors.SnakepitError) else error


def _request(tool_name: str, args: dict[str, Any]) -> Any:
    from snakepit._seam.request import CallRequest

    return CallRequest(tool_name, args)


def _dumps(fn: Callable[..., Any]) -> bytes:
    import cloudpickle

    from snakepit._remote import remember

    module = getattr(fn, "__module__", None)
    if module == "__main__" or "<" in getattr(fn, "__qualname__", "<"):  # travels by value: its frames lose their file
        remember(fn)
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise errors.validation(Reason.SERIALIZATION_ERROR, f"cannot pickle {fn!r}: {type(exc).__name__}: {exc}") from exc


def _label(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__)


def _named(error: errors.SnakepitError, function: str, tool_name: str) -> errors.SnakepitError:
    """``error`` saying which function it is about, rather than the adapter's tool."""
    error.message = error.message.replace(repr(tool_name), repr(function))
    error.args = (error.message,)
    error.details["function"] = function
    return error


def _chunks(calls: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    """``calls`` in lists of ``size`` (the last one shorter), as ``map``'s chunks."""
    calls = iter(calls)
    return iter(lambda: list(itertools.islice(calls, size)), [])


def _pickled_chunk(chunk: list[tuple[Any, ...]]) -> bytes:
    from snakepit import _protocol as protocol

    try:
        return protocol._fast_dumps(chunk)
    except Exception as exc:
        raise errors.validation(Reason.SERIALIZATION_ERROR, f"cannot pickle a chunk of map's arguments: {exc}") from exc


def _unwrapped(error: errors.ToolError) -> BaseException:
    """The function's own exception, its cause the worker's traceback (else the ToolError)."""
    from snakepit._remote import original

    exception = original(error)
    if exception is None:
        return error
    exception.__cause__ = error.__cause__
    return exception


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _streamed(
    results: queue.SimpleQueue[Any],
    future: CallFuture,
    pool: Pool,
    end: float | None,
    *,
    chunked: bool,
    label: tuple[str, str],
) -> Iterator[Any]:
    """A pipelined map's results as they arrive, in order, by ``end``; the map is cancelled if
    the iteration stops early."""
    try:
        while True:
            try:
                value = results.get(timeout=None if end is None else max(end - time.monotonic(), 0))
            except queue.Empty:
                raise TimeoutError from None
            if value is _END:
                return
            if type(value) is _Failed:
                if isinstance(value.error, asyncio.CancelledError):
                    raise concurrent.futures.CancelledError from None
                raise value.error
            if isinstance(value, errors.SnakepitError):
                error = _unwrapped(value) if isinstance(value, errors.ToolError) else _named(value, *label)
                raise error from error.__cause__
            if chunked:
                yield from value
            else:
                yield value
    finally:
        if not future.done():
            pool.cancel(future)


def _results(futures: list[CallFuture], end: float | None, *, chunked: bool) -> Iterator[Any]:
    """The futures' results in order by ``end`` (``concurrent.futures``' map); cancels the rest
    if the iteration stops early."""
    try:
        futures.reverse()
        while futures:
            future = futures[-1]
            value = future.result(None if end is None else end - time.monotonic())
            futures.pop()
            if chunked:
                yield from value
            else:
                yield value
    finally:
        for future in futures:
            future.cancel()

"""Hosting the user's tools: one adapter instance, one call at a time, whatever carries the calls.

A :class:`ToolHost` runs what the owner asks for -- a ``Call`` (a value, or a stream of chunks
sent as they are yielded) or a ``Batch`` (``pool.map``) -- and sends the answers through an
*outbox*: anything with ``send(message)``, ``chunk_writer(call_id)`` and ``flush()``. It knows
nothing of pipes or file descriptors: the process backend's worker (:mod:`snakepit._backends.process.child`)
feeds it from its pipes, and any other transport can do the same.

Cancellation names calls exactly (``Cancel(ids)``). The ids a host receives grow, so a cancel for
a call not started yet (a map's queued batch) waits in ``_cancelled`` until the call arrives, and
ids below the call being started are forgotten. A cancelled call stops

* before its tool code runs, if the cancel came first;
* between two chunks: the stream loop checks before it asks the generator for the next one;
* inside the tool's own code: the transport interrupts the thread running it (the process
  worker with a signal) and :meth:`ToolHost.interrupt`, run in that thread, raises
  :class:`~snakepit.CallCancelled` there, as Ctrl-C raises ``KeyboardInterrupt``. It does so only
  while that very call's tool code runs (``_armed``): never while a frame is being written,
  never into the next call. Python code and interruptible waits (``time.sleep``, locks,
  sockets) stop at once and the tool's ``finally`` runs; code stuck in C runs on until the owner
  gives up on the worker.

Whatever a tool raises, ``SystemExit`` and ``KeyboardInterrupt`` included, is that call's error:
the host lives on.
"""

from __future__ import annotations

import functools
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import msgspec

from snakepit import _adapter, telemetry
from snakepit import _errors as errors
from snakepit import _protocol as protocol
from snakepit._adapter import BaseAdapter, BoundTool, discover_tools, import_by_path
from snakepit._errors import CallCancelled, Reason
from snakepit._protocol import (
    PACKED,
    Batch,
    BatchResult,
    Call,
    Chunk,
    End,
    Failure,
    Ready,
    Result,
    StartFailed,
    decode_value,
    encode_value,
)
from snakepit._streaming import StreamChunk

_SCALARS = protocol._SCALARS
_plain = protocol._plain


class Outbox(Protocol):
    """Where a host's answers go. One that can carry large buffers beside its frames also has
    ``share`` (see :data:`snakepit._protocol.Share`)."""

    def send(self, message: msgspec.Struct) -> None: ...

    def chunk_writer(self, call_id: int) -> Callable[[Any], None]: ...

    def array_writer(self, call_id: int, limit: int, accept_pickle: bool) -> Callable[[Any], bool]:
        """A function sending one chunk of ``call_id``'s batched stream per call, as an element of
        the JSON arrays the owner receives, up to ``limit`` chunks at hand each; False (nothing
        sent) for one that cannot be an element (see :func:`~snakepit._encoding.element_into`)."""
        ...

    def flush(self) -> None: ...


def _load_adapter(spec: Any) -> type:
    return import_by_path(spec) if isinstance(spec, str) else decode_value(spec)


_HOST_FILES = frozenset({__file__, _adapter.__file__})  # the frames above the tool's


def _tool_traceback(exc: BaseException) -> str:
    """The traceback from the tool's frame down, without the host's frames."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in _HOST_FILES or tb.tb_frame.f_globals.get("__name__") == "snakepit.executor"
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _tool_exception(call_id: int, tool: str, exc: BaseException) -> Failure:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return Failure(
        call_id,
        errors.Category.PYTHON_ERROR,
        Reason.TOOL_EXCEPTION,
        f"tool {tool!r} raised {name}: {_text(exc)}",
        {"type": name, "message": _text(exc), "tool": tool},
        _tool_traceback(exc),
        _pickled_exception(exc),
    )


MAX_EXCEPTION_PICKLE = 1 << 20  # an exception carrying more than this travels as its description alone


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException as failure:  # its __str__ raised
        return f"<str() raised {type(failure).__name__}>"


def _pickled_exception(exc: BaseException) -> bytes | None:
    """The exception, pickled for the caller (its attributes, as the original object), when it
    pickles (its traceback, cause and context do not travel) and is not too large."""
    if not isinstance(exc, Exception) or isinstance(exc, errors.SnakepitError):
        return None
    try:
        data = protocol._fast_dumps(exc)
    except BaseException:  # its own pickling code may raise anything
        return None
    return data if len(data) <= MAX_EXCEPTION_PICKLE else None


def _dumps(value: Any, buffer_callback: Any = None) -> bytes:
    """Pickle a value the worker sends. Its own pickling code may raise anything (``SystemExit``
    included): that is this value's ``serialization_error``, not the worker's end."""
    try:
        return protocol._fast_dumps(value, buffer_callback)
    except Exception:
        raise
    except BaseException as exc:
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None


def _decode_args(value: Any) -> Any:
    """A call's arguments as the tool gets them; unpickling code that raises is the caller's
    ``serialization_error`` (decoding the owner's results keeps Ctrl-C a ``KeyboardInterrupt``)."""
    try:
        return decode_value(value)
    except errors.SnakepitError:
        raise
    except BaseException as exc:
        raise errors.validation(Reason.SERIALIZATION_ERROR, f"cannot deserialize value: {type(exc).__name__}: {exc}") from None


def _attach_trace(traceparent: str) -> Any:
    from snakepit import _tracing as tracing  # imports OpenTelemetry: only in workers of a traced pool

    return tracing.attach(traceparent)


def _detach_trace(token: Any) -> None:
    from snakepit import _tracing as tracing

    tracing.detach(token)


class ToolHost:
    def __init__(self, out: Outbox) -> None:
        self._out = out
        self._share: protocol.Share | None = getattr(out, "share", None)
        self._cancelled: set[int] = set()  # ids told to cancel that may still run here
        self._running: int | None = None  # the call or batch being run
        self._armed = False  # the running call's tool code is executing: it may be interrupted
        self._shielded = 0  # our code, called by the tool, is writing a frame: a cancel waits
        self._cancel_waits = False
        self._main = threading.get_ident()  # the thread that runs tools: the one that creates the host
        self._live_batch: tuple[int, list[Any]] | None = None  # the map batch running, see _run_batch
        self._tools: dict[str, BoundTool] = {}
        self._adapter: Any = None

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, message: Any) -> None:
        self._out.send(message)

    def _send_wire(self, build: Callable[[Any], Any], value: Any) -> None:
        """Send ``build(value on the wire)``. Raises ``serialization_error``."""
        protocol.encode_with(lambda wire: self._send(build(wire)), value, dumps=_dumps, share=self._share)

    def _send_value(self, call_id: int, value: Any, encode: str | None = None) -> None:
        if encode is not None:
            try:
                wire = protocol.encoded_wire(value, encode)
            except errors.SnakepitError as exc:
                self._send(protocol.failure(call_id, exc))
                return
            if wire is not None:
                self._send(Result(call_id, wire))
                return
        if type(value) in _SCALARS and not protocol.shares(value, self._share):  # the common case, without closures
            try:
                self._out.send(Result(call_id, value))
                return
            except protocol.REFUSED:  # e.g. an int beyond 64 bits
                pass
        try:
            self._send_wire(lambda wire: Result(call_id, wire), value)
        except errors.SnakepitError as exc:
            self._send(protocol.failure(call_id, exc))

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, adapter: Any, adapter_args: Any) -> Ready | StartFailed:
        """Create the adapter (a ``"module:Class"`` path, or a pickled class) and initialise it:
        the ``Ready`` to send, with the tools' specs, or why it could not start."""
        try:
            cls = _load_adapter(adapter)
            if not isinstance(cls, type) or not issubclass(cls, BaseAdapter):
                raise TypeError(
                    f"{adapter!r} is not a snakepit.BaseAdapter subclass"
                    + ("; for plain functions: Pool(function) or Pool('package.module')" if callable(cls) else "")
                )
            self._adapter = cls(**(decode_value(adapter_args) or {}))
            self._adapter.initialize()
            self._tools = discover_tools(self._adapter)
        except BaseException as exc:
            return StartFailed(f"{type(exc).__name__}: {exc}", _tool_traceback(exc))
        return Ready(0, [t.spec for t in self._tools.values()])  # the transport fills in the pid

    def run(self, message: Call | Batch) -> None:
        """Run one call or batch to its end, sending its answers."""
        call_id = self._running = message.id
        if self._cancelled:
            self._forget_before(call_id)
        context = telemetry.current.set(message)  # for the tool's telemetry and log records
        traced = None if message.trace is None else _attach_trace(message.trace)
        try:
            if isinstance(message, Call):
                self._run(message)
            else:
                self._run_batch(message)
        finally:
            if traced is not None:
                _detach_trace(traced)
            telemetry.current.reset(context)
            self._running = None
            self._cancelled.discard(call_id)

    def cleanup(self) -> None:
        try:
            self._adapter.cleanup()
        except Exception:
            traceback.print_exc()

    # -- cancellation --------------------------------------------------------------------------

    def cancel(self, ids: list[int]) -> bool:
        """Record a cancel (any thread). True if the running call is among ``ids``: its thread
        should then be interrupted, and run :meth:`interrupt`."""
        self._cancelled.update(ids)
        batch = self._live_batch
        if batch is not None and batch[0] in ids:
            batch[1].clear()  # stops the batch's iteration before its next item
        return self._running in ids

    def _forget_before(self, call_id: int) -> None:
        """Cancels of calls older than ``call_id`` came after those calls ended: drop them."""
        for stale in [i for i in list(self._cancelled) if i < call_id]:  # list(): one atomic copy
            self._cancelled.discard(stale)

    def interrupt(self) -> None:
        """In the thread running tools: stop the running tool if its call is cancelled."""
        if self._armed and self._running in self._cancelled:
            if self._shielded:
                self._cancel_waits = True  # raised when the frame is written, see _Shield
            else:
                self._stop()

    def shield(self) -> _Shield:
        """A context in which a cancel is not raised (the tool logs: a frame is being written)."""
        return _Shield(self)

    def _stop(self) -> None:
        """Raise ``CallCancelled`` into the running tool, once: its ``finally`` is not interrupted."""
        self._armed = False
        raise CallCancelled()

    def _gather_call(self, call_id: int, tool: Any, bound: Any) -> list[Any]:
        return self._gather(call_id, tool.call(bound))

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``: tool code, which a cancel of the running call interrupts."""
        self._armed = True
        try:
            if self._running in self._cancelled:
                self._stop()
            return fn(*args)
        finally:
            self._armed = False

    # -- calls ---------------------------------------------------------------------------------

    def _run(self, call: Call) -> None:
        call_id = call.id
        tool = self._tools.get(call.tool)
        try:
            if tool is None:
                raise errors.validation(Reason.TOOL_NOT_FOUND, f"unknown tool {call.tool!r}", tool=call.tool)
            if call.stream and not tool.spec.supports_streaming:
                raise errors.validation(Reason.NOT_STREAMING, f"tool {call.tool!r} does not support streaming", tool=call.tool)
            args = call.args
            bound = tool.convert(args if type(args) not in PACKED else _decode_args(args))
        except errors.SnakepitError as exc:
            self._send(protocol.failure(call_id, exc))
            return
        if call.stream:
            self._stream(call_id, call.tool, tool, bound, call.encode, call.batch)
            return
        try:
            if tool.spec.supports_streaming or tool.is_generator:  # execute on a stream: every chunk
                out = self._guarded(self._gather_call, call_id, tool, bound)
            else:
                out = self._guarded(tool.call, bound)
        except CallCancelled:
            self._send(End(call_id, True))
            return
        except BaseException as exc:
            self._send(_tool_exception(call_id, call.tool, exc))
            return
        del bound  # the arguments' shared memory goes back to the owner before it has the answer
        self._send_value(call_id, out, call.encode)

    def _stream(
        self, call_id: int, name: str, tool: BoundTool, bound: Any, encode: str | None = None, batch: int | None = None
    ) -> None:
        """Send each chunk as it is yielded; tool code runs armed, chunk writes do not. With
        ``encode``, each chunk goes as the owner is to hand it on, if small enough (see
        :func:`~snakepit._protocol.encoded_wire`): a chunk that cannot be encoded so ends the
        stream with its ``serialization_error``, after the chunks before it. With ``batch``
        too, each chunk is an element of the JSON arrays the outbox builds (see
        :func:`~snakepit._encoding.element_into`); one that cannot be travels as a list of its own."""
        chunk = self._out.chunk_writer(call_id)
        element = None if batch is None else self._out.array_writer(call_id, batch, encode == "pickle")
        cancelled_ids = self._cancelled
        scalars, plain, pickled, shares, share = _SCALARS, _plain, protocol.pickled, protocol.shares, self._share
        encoded_wire = protocol.encoded_wire
        items: Any = None
        item: Any  # a chunk as yielded, then as it travels
        cancelled = False
        ending: Failure | None = None
        try:
            try:
                items = self._guarded(_iterate, tool, bound)
                # Armed from here to each yield; disarmed while a chunk is written. A cancel is
                # looked for after arming: either the signal finds the tool armed, or this check
                # finds the cancel (the control thread records it before signalling).
                self._armed = True
                if call_id in cancelled_ids:
                    self._stop()
                for item in items:
                    self._armed = False
                    kind = type(item)
                    if kind is StreamChunk:
                        if item.is_final or item.metadata is not None:
                            self._special_chunk(call_id, item, encode, batch)
                            if item.is_final:
                                break
                            self._armed = True
                            if call_id in cancelled_ids:
                                self._stop()
                            continue
                        item = item.data
                        kind = type(item)
                    if element is not None:
                        if element(item):
                            self._armed = True
                            if call_id in cancelled_ids:
                                self._stop()
                            continue
                        item = [item]  # a batch of its own, encoded as any value is
                        kind = list
                    if encode is not None and (wire := encoded_wire(item, encode)) is not None:
                        item = wire
                    elif kind not in scalars:
                        if not plain(item):
                            item = pickled(item, _dumps, share)
                    elif kind is bytes and shares(item, share):
                        assert share is not None
                        item = share("bytes", b"", [memoryview(item)])
                    try:
                        chunk(item)
                    except protocol.REFUSED:  # e.g. an int beyond 64 bits: msgpack cannot hold it, pickle can
                        chunk(pickled(item, _dumps, share))
                    self._armed = True
                    if call_id in cancelled_ids:
                        self._stop()
            finally:
                self._armed = False
        except CallCancelled:
            cancelled = True
        except errors.SnakepitError as exc:  # a chunk that cannot be serialized
            ending = protocol.failure(call_id, exc)
        except BaseException as exc:
            ending = _tool_exception(call_id, name, exc)
        try:
            _close(items)
        except BaseException as exc:  # the generator's finally raised
            if ending is None:
                ending = _tool_exception(call_id, name, exc)
        self._send(ending if ending is not None else End(call_id, cancelled))

    def _special_chunk(self, call_id: int, item: StreamChunk, encode: str | None, batch: int | None = None) -> None:
        """A chunk with a final flag or metadata travels as a ``Chunk`` of its own (its metadata
        as a value, whatever ``encode`` says; in a batched stream, a batch of its own)."""
        metadata = None if item.metadata is None else encode_value(item.metadata, _dumps)
        value = item.data if batch is None else [item.data]
        data = None if encode is None else protocol.encoded_wire(value, encode)
        if data is None:
            data = protocol.wire_value(value, dumps=_dumps, share=self._share)
        try:
            self._send(Chunk(call_id, data, item.is_final, metadata))
            return
        except protocol.REFUSED:  # e.g. an int beyond 64 bits, in the metadata or the data
            pass
        # Shared data keeps its form: its segment is on its way already, and the owner takes
        # segments in the order they were sent. Only what msgpack refused is pickled.
        metadata = None if item.metadata is None else protocol.pickled(item.metadata, _dumps)
        try:
            self._send(Chunk(call_id, data, item.is_final, metadata))
        except protocol.REFUSED:
            self._send(Chunk(call_id, protocol.pickled(item.data, _dumps), item.is_final, metadata))

    def _gather(self, call_id: int, out: Any) -> list[Any]:
        """Every chunk's data of a streaming tool's output (runs armed: it is tool code)."""
        items = iter(out)
        collected = []
        try:
            for item in items:
                if call_id in self._cancelled:
                    self._stop()
                if type(item) is StreamChunk:
                    collected.append(item.data)
                    if item.is_final:
                        break
                else:
                    collected.append(item)
        finally:
            _close(items)
        return collected

    def _run_batch(self, batch: Batch) -> None:
        """Many calls of one tool (``pool.map``): one result or error per item, in order.

        Stops early if cancelled: the items after the last value never ran.
        """
        values: list[Any] = []
        failures: list[list[Any]] = []
        tool = self._tools.get(batch.tool)
        try:
            if tool is None:
                raise errors.validation(Reason.TOOL_NOT_FOUND, f"unknown tool {batch.tool!r}", tool=batch.tool)
            items = tool.decode_many(batch.items, _decode_items)
        except errors.SnakepitError as exc:
            self._send(protocol.failure(batch.id, exc))
            return
        run: Callable[[Iterator[Any]], Iterator[Any]] = tool.call_many
        if tool.spec.supports_streaming or tool.is_generator:
            call = tool.call
            run = functools.partial(map, lambda bound: self._gather(batch.id, call(bound)))
        # The items run in one C-level iteration (a Python loop would triple the cost of a tiny
        # task) over ``live``, a copy the control thread empties on Cancel: the list iterator
        # stops before the next item. An exception ends the iteration, and so does a
        # StopIteration escaping the tool (as if the items had run out); either way
        # ``len(values)`` names the item, and the iteration resumes after it. The whole loop is
        # tool code: a cancel interrupts the item running.
        live = list(items)
        self._live_batch = (batch.id, live)
        if batch.id in self._cancelled:
            live.clear()
        pending: Any = iter(live)  # a list iterator: __setstate__ moves it on past a failure
        try:
            self._armed = True
            while True:
                try:
                    values.extend(run(pending))
                except CallCancelled:
                    raise
                except BaseException as exc:
                    failed, error = len(values), exc
                else:
                    failed = len(values)
                    if failed >= len(live):  # every item ran, or a Cancel emptied the list
                        break
                    error = StopIteration("escaped the tool (its traceback is lost in a map batch)")
                values.append(None)
                failures.append(_batch_failure(batch, failed, items[failed], error))
                pending = iter(live)
                pending.__setstate__(failed + 1)
        except CallCancelled:
            pass  # the items after the last value never ran
        finally:
            self._armed = False
            self._live_batch = None
        self._send_batch_result(batch.id, values, failures)

    def _send_batch_result(self, call_id: int, values: list[Any], failures: list[list[Any]]) -> None:
        try:
            self._send_wire(lambda wire: BatchResult(call_id, wire, failures), values)
        except errors.SnakepitError:
            # Some value cannot be serialized: send the others one by one, and fail just that item.
            encoded: list[Any] = []
            for index, value in enumerate(values):
                try:
                    encoded.append(protocol.pickled(value, _dumps))
                except errors.SnakepitError as exc:
                    encoded.append(None)
                    failures.append([index, exc.category, exc.reason, exc.message, exc.details, None])
            failures.sort(key=lambda failure: failure[0])
            self._send(BatchResult(call_id, encoded, failures, one_by_one=True))


class _Shield:
    """Held by the main thread while it writes a frame from inside tool code (a log record):
    ``CallCancelled`` there would leave half a frame in the pipe. A cancel that comes meanwhile
    is raised on the way out. Other threads need no shield: the signal only reaches the main one."""

    __slots__ = ("_worker", "_main")

    def __init__(self, worker: ToolHost) -> None:
        self._worker = worker
        self._main = threading.get_ident() == worker._main

    def __enter__(self) -> None:
        if self._main:
            self._worker._shielded += 1

    def __exit__(self, *exc_info: object) -> None:
        if not self._main:
            return
        worker = self._worker
        worker._shielded -= 1
        if not worker._shielded and worker._cancel_waits:
            worker._cancel_waits = False
            if worker._armed and worker._running in worker._cancelled:
                worker._stop()


def _iterate(tool: BoundTool, bound: Any) -> Iterator[Any]:
    """Call a streaming tool and start iterating what it returned."""
    return iter(tool.call(bound))


_generic = msgspec.msgpack.Decoder()


def _batch_failure(batch: Batch, index: int, bound: Any, exc: BaseException) -> list[Any]:
    """The failure entry of item ``index``: its invalid arguments, or what the tool raised."""
    error: Any = bound if isinstance(bound, errors.SnakepitError) else exc
    if not isinstance(error, errors.SnakepitError):
        failure = _tool_exception(batch.id, batch.tool, exc)
        return [index, failure.category, failure.reason, failure.message, failure.details, failure.traceback, failure.exception]
    return [index, error.category, error.reason, error.message, error.details, error.traceback]


def _decode_items(encoded: Any) -> Any:
    """A batch's items, each decoded on its own: one that will not unpickle is its error."""
    items = _generic.decode(encoded)
    if type(items) is not list:
        return _decode_args(items)
    decoded = []
    for args in items:
        try:
            decoded.append(_decode_args(args))
        except errors.SnakepitError as exc:
            decoded.append(exc)
    return decoded


def _close(items: Any) -> None:
    close = getattr(items, "close", None) if items is not None else None
    if close is not None:
        close()

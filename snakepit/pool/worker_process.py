"""What runs inside a worker process: one adapter instance, one call at a time.

The main thread reads calls from the requests pipe and writes results and chunks to the responses
pipe, directly, with no thread hand-off on the hot path. A control thread reads the control pipe so
that a cancel reaches a running stream: the stream loop checks the cancelled call id between items
and closes the generator (its ``finally`` runs) before the worker reads its next call.

The worker never outlives its owner: on Linux the kernel sends SIGKILL when the owner dies
(``PR_SET_PDEATHSIG``), and on every OS end-of-file on the control pipe ends the process.
SIGINT is ignored: Ctrl-C in a terminal is the owner's to handle; the owner then shuts us down.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Iterator

import msgspec

from .. import errors, protocol
from ..adapter import BoundTool, discover_tools, import_by_path
from ..errors import Reason
from ..protocol import (
    Batch, BatchResult, Boot, Call, Cancel, Chunk, End, Failure, FrameReader, Ping, Pong, Ready,
    Result, Shutdown, StartFailed, ToWorker, decode_value, encode_value,
)
from .events import Events
from ..streaming import StreamChunk
from .outbox import Outbox

_SCALARS = protocol._SCALARS
_plain = protocol._plain


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except Exception:  # no libc symbol: pipe end-of-file still ends us
            pass


def _load_adapter(spec: Any) -> type:
    return import_by_path(spec) if isinstance(spec, str) else decode_value(spec)


def _tool_traceback(exc: BaseException) -> str:
    """The traceback from the tool's frame down, without this module's frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _tool_exception(call_id: int, tool: str, exc: BaseException) -> Failure:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return Failure(
        call_id,
        errors.Category.PYTHON_ERROR,
        Reason.TOOL_EXCEPTION,
        f"tool {tool!r} raised {name}: {exc}",
        {"type": name, "message": str(exc), "tool": tool},
        _tool_traceback(exc),
    )


class Worker:
    def __init__(self, requests: int, control: int, responses: int, events: int, spill: int) -> None:
        self._requests = requests
        self._control = control
        self._responses = responses
        self._out = Outbox(responses, spill)
        self._events = Events(events)
        # Cancel(n) cancels every call up to n: ids grow, and a worker may have calls queued.
        self.cancelled = -1
        self._live_batch: tuple[int, list[Any]] | None = None  # the map batch running, see _run_batch
        self._tools: dict[str, BoundTool] = {}
        self._adapter: Any = None

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, message: Any) -> None:
        self._out.send(message)

    def _send_wire(self, build: Callable[[Any], Any], value: Any) -> None:
        """Send ``build(value on the wire)``. Raises ``serialization_error``."""
        protocol.encode_with(lambda wire: self._send(build(wire)), value)

    def _send_value(self, call_id: int, value: Any) -> None:
        try:
            self._send_wire(lambda wire: Result(call_id, wire), value)
        except errors.SnakepitError as exc:
            self._send(protocol.failure(call_id, exc))

    # -- life cycle ----------------------------------------------------------------------------

    def boot(self) -> None:
        reader = FrameReader(ToWorker)
        boot = reader.read_blocking(self._requests)
        if not isinstance(boot, Boot):
            os._exit(2)
        sys.path[:] = boot.sys_path
        try:
            os.chdir(boot.cwd)
        except OSError:
            pass
        self._events.relay_logging(boot.log_level)
        try:
            cls = _load_adapter(boot.adapter)
            self._adapter = cls(**(decode_value(boot.adapter_args) or {}))
            self._adapter.initialize()
            self._tools = discover_tools(self._adapter)
        except BaseException as exc:
            self._send(StartFailed(f"{type(exc).__name__}: {exc}", _tool_traceback(exc)))
            self._out.flush()
            os._exit(3)
        self._send(Ready(os.getpid(), [t.spec for t in self._tools.values()]))
        self._reader = reader

    def serve(self) -> None:
        threading.Thread(target=self._control_loop, name="snakepit-control", daemon=True).start()
        read = self._reader.read_blocking
        while True:
            message = read(self._requests)
            if message is None:  # the owner is gone
                os._exit(0)
            if type(message) is Call:
                self._run(message)
            elif type(message) is Batch:
                self._run_batch(message)
            elif type(message) is Shutdown:
                break
        self._cleanup()
        self._out.flush()

    def _cleanup(self) -> None:
        try:
            self._adapter.cleanup()
        except Exception:
            traceback.print_exc()

    def _control_loop(self) -> None:
        reader = FrameReader(ToWorker)
        while True:
            try:
                message = reader.read_blocking(self._control)
            except OSError:
                message = None
            if message is None:  # the owner is gone: nobody will read what we produce
                os._exit(0)
            if type(message) is Cancel:
                self.cancelled = message.id
                batch = self._live_batch
                if batch is not None and batch[0] <= message.id:
                    batch[1].clear()  # stops the batch's iteration before its next item
            elif type(message) is Ping:
                self._events.send(Pong(message.seq), essential=True)

    # -- calls ---------------------------------------------------------------------------------

    def _run(self, call: Call) -> None:
        tool = self._tools.get(call.tool)
        try:
            if tool is None:
                raise errors.validation(Reason.TOOL_NOT_FOUND, f"unknown tool {call.tool!r}", tool=call.tool)
            if call.stream and not tool.spec.supports_streaming:
                raise errors.validation(
                    Reason.NOT_STREAMING, f"tool {call.tool!r} does not support streaming", tool=call.tool
                )
            bound = tool.convert(decode_value(call.args))
        except errors.SnakepitError as exc:
            self._send(protocol.failure(call.id, exc))
            return
        try:
            out = tool.call(bound)
        except Exception as exc:
            self._send(_tool_exception(call.id, call.tool, exc))
            return
        if call.stream:
            self._stream(call, out)
        elif tool.spec.supports_streaming or tool.is_generator:
            self._collect(call, out)
        else:
            self._send_value(call.id, out)

    def _stream(self, call: Call, out: Any) -> None:
        call_id = call.id
        chunk = self._out.chunk_writer(call_id)
        cancelled = False
        try:
            items = iter(out)
        except TypeError as exc:
            self._send(_tool_exception(call_id, call.tool, exc))
            return
        scalars, plain, pickled = _SCALARS, _plain, protocol.pickled
        try:
            for item in items:
                if self.cancelled >= call_id:
                    cancelled = True
                    break
                kind = type(item)
                if kind is StreamChunk:
                    if item.is_final or item.metadata is not None:
                        self._special_chunk(call_id, item)
                        if item.is_final:
                            break
                        continue
                    item = item.data
                    kind = type(item)
                if kind not in scalars and not plain(item):
                    item = pickled(item)
                try:
                    chunk(item)
                except protocol.REFUSED:  # e.g. an int beyond 64 bits: msgpack cannot hold it, pickle can
                    chunk(pickled(item))
        except errors.SnakepitError as exc:
            self._end_with(call_id, items, protocol.failure(call_id, exc))
            return
        except Exception as exc:
            self._end_with(call_id, items, _tool_exception(call_id, call.tool, exc))
            return
        try:
            _close(items)
        except Exception as exc:  # the generator's finally raised
            self._send(_tool_exception(call_id, call.tool, exc))
            return
        self._send(End(call_id, cancelled))

    def _special_chunk(self, call_id: int, item: StreamChunk) -> None:
        """A chunk with a final flag or metadata travels as a ``Chunk`` of its own."""
        metadata = None if item.metadata is None else encode_value(item.metadata)
        try:
            self._send(Chunk(call_id, encode_value(item.data), item.is_final, metadata))
        except protocol.REFUSED:
            self._send(Chunk(call_id, protocol.pickled(item.data), item.is_final, protocol.pickled(item.metadata)))

    def _end_with(self, call_id: int, items: Any, failure: Failure) -> None:
        try:
            _close(items)
        except Exception:  # the stream already failed; that failure is the one to report
            pass
        self._send(failure)

    def _collect(self, call: Call, out: Any) -> None:
        """``execute`` on a streaming tool: the list of every chunk's data."""
        try:
            collected = self._gather(call.id, out)
        except Exception as exc:
            self._send(_tool_exception(call.id, call.tool, exc))
            return
        self._send_value(call.id, collected)

    def _gather(self, call_id: int, out: Any) -> list[Any]:
        items = iter(out)
        collected = []
        try:
            for item in items:
                if self.cancelled >= call_id:
                    break
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
        # ``len(values)`` names the item, and the iteration resumes after it.
        live = list(items)
        self._live_batch = (batch.id, live)
        if self.cancelled >= batch.id:
            live.clear()
        pending = iter(live)
        try:
            while True:
                try:
                    values.extend(run(pending))
                except Exception as exc:
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
        finally:
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
                    encoded.append(protocol.pickled(value))
                except errors.SnakepitError as exc:
                    encoded.append(None)
                    failures.append([index, exc.category, exc.reason, exc.message, exc.details, None])
            failures.sort(key=lambda failure: failure[0])
            self._send(BatchResult(call_id, encoded, failures, one_by_one=True))


_generic = msgspec.msgpack.Decoder()


def _batch_failure(batch: Batch, index: int, bound: Any, exc: Exception) -> list[Any]:
    """The failure entry of item ``index``: its invalid arguments, or what the tool raised."""
    error = bound if isinstance(bound, errors.SnakepitError) else exc
    if not isinstance(error, errors.SnakepitError):
        error = _tool_exception(batch.id, batch.tool, exc)
    return [index, error.category, error.reason, error.message, error.details, error.traceback]


def _decode_items(encoded: Any) -> Any:
    return decode_value(_generic.decode(encoded))


def _close(items: Any) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    requests, control, responses, events, spill = (int(fd) for fd in sys.argv[1:6])
    owner = int(sys.argv[6])
    if os.getppid() != owner:  # the owner died before PDEATHSIG was armed
        os._exit(0)
    for fd in (requests, control, responses, events, spill):
        os.set_inheritable(fd, False)
    worker = Worker(requests, control, responses, events, spill)
    worker.boot()
    worker.serve()

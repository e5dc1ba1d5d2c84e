"""What runs inside a Ray actor: a :class:`~snakepit.hosting.ToolHost`, fed by actor methods.

Calls arrive as the same encoded frames the process backend writes to its pipes; answers leave
as the same frames, several per streamed object. The tools run on one thread of the actor's own
(a model that binds to the thread that loaded it keeps working), fed from ``run``; ``run`` is a
Ray streaming generator that hands back, in order, whatever the tool thread has produced
whenever it has something, so chunks reach the owner as they are yielded, with Ray's generator
backpressure bounding what is buffered.

``cancel`` and ``ping`` run in a concurrency group of their own, beside a running call. A
cancel is recorded by the host (checked before the tool starts and at each yield) and, while
the tool's own code runs, raised into the tool thread as an asynchronous exception: it fires at
the next bytecode, not inside a blocking C call (``time.sleep`` included), so such a tool is
stopped by the owner killing the actor after ``cancel_grace``.
"""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import threading
from typing import Any, Callable, Iterator

import ray

from ...errors import CallCancelled, Category, Reason
from ...hosting import ToolHost
from ...protocol import TERMINAL, Batch, Boot, Call, Chunk, Failure, FrameReader, Ready, ToWorker, encode_frame

_MAX_PER_OBJECT = 512  # messages packed into one streamed object, at most
_QUEUE = 4096  # messages the tool thread may run ahead of the stream (then it waits)


class _QueueOutbox:
    """The host's way out: a bounded queue the streaming ``run`` drains."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(_QUEUE)

    def send(self, message: Any) -> None:
        self.queue.put(message)

    def chunk_writer(self, call_id: int) -> Callable[[Any], None]:
        put = self.queue.put
        return lambda data: put(Chunk(call_id, data))

    def flush(self) -> None:
        pass


@ray.remote(concurrency_groups={"control": 1})
class SnakepitActor:
    """The actor class; :mod:`.backend` adds the user's ``actor_options``."""

    def __init__(self) -> None:
        self._out = _QueueOutbox()
        self._host: ToolHost | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any] | None]] = queue.SimpleQueue()
        self._tool_thread = threading.Thread(target=self._serve, name="snakepit-tools", daemon=True)
        self._tool_thread.start()

    # -- the tool thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                job, reply = self._jobs.get()
                result = job()
                if reply is not None:
                    reply.put(result)
            except CallCancelled:  # a cancel that came as its call was ending: not this job's
                pass

    def _on_tool_thread(self, job: Callable[[], Any]) -> Any:
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs.put((job, reply))
        return reply.get()

    # -- methods -----------------------------------------------------------------------------------

    def start(self, boot_frame: bytes) -> tuple[bytes, str]:
        """Load and initialise the adapter (on the tool thread): a ``Ready`` or ``StartFailed``
        frame, and the address of the node this actor runs on."""
        [boot] = FrameReader(ToWorker).feed(boot_frame)
        assert isinstance(boot, Boot)
        for path in reversed(boot.sys_path):  # the owner's paths, where they exist here
            if path not in sys.path and (not path or os.path.isdir(path)):
                sys.path.insert(0, path)
        self._host = ToolHost(self._out)
        started = self._on_tool_thread(lambda: self._host.start(boot.adapter, boot.adapter_args))  # type: ignore[union-attr]
        if type(started) is Ready:
            started = Ready(os.getpid(), started.tools)
        return bytes(encode_frame(started)), ray.util.get_node_ip_address()

    @ray.method(num_returns="streaming")
    def run(self, frame: bytes) -> Iterator[bytes]:
        """Run one call or map batch; yields its answers as frames, as they come."""
        [message] = FrameReader(ToWorker).feed(frame)
        assert type(message) is Call or type(message) is Batch
        host = self._host
        assert host is not None
        call_id = message.id

        def job() -> None:
            try:
                host.run(message)
            except BaseException:  # a cancel that struck outside the tool's code: still end the call
                self._out.send(Failure(call_id, Category.PYTHON_ERROR, Reason.TOOL_EXCEPTION, "the call was interrupted", {}, None))

        self._jobs.put((job, None))
        pending = self._out.queue
        while True:
            batch = [pending.get()]
            while len(batch) < _MAX_PER_OBJECT:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
            yield b"".join(encode_frame(item) for item in batch)
            if any(isinstance(item, TERMINAL) and item.id == call_id for item in batch):
                return

    @ray.method(concurrency_group="control")
    def cancel(self, ids: list[int]) -> None:
        """Cancel these calls (concurrency group "control": beside the running one)."""
        host = self._host
        if host is not None and host.cancel(ids) and host._armed:
            ident = self._tool_thread.ident
            if ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(CallCancelled))

    @ray.method(concurrency_group="control")
    def ping(self, seq: int) -> int:
        return seq

    def stop(self) -> None:
        """The adapter's ``cleanup()``, after the calls queued before it."""
        if self._host is not None:
            self._on_tool_thread(self._host.cleanup)

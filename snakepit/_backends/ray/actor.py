"""What runs inside a Ray actor: a :class:`~snakepit._hosting.threaded.ThreadHost`, fed by actor methods.

Calls arrive as the same encoded frames the process backend writes to its pipes; answers leave
as the same frames. A call with one answer (``execute``, a map batch) is a plain actor method
(``call``), run on the thread Ray runs the actor's methods on, where ``initialize()`` ran too. A
stream is ``run``, a Ray streaming generator: the tool runs on a helper thread and ``run``
hands back, in order, whatever it has produced whenever it has something (several frames per
object), so chunks reach the owner as they are yielded, with Ray's generator backpressure and a
bounded queue limiting what is buffered.

Telemetry a tool sends (:mod:`snakepit.telemetry`) waits in a bounded buffer (the oldest is
dropped when it is full) and leaves with the answer to the next heartbeat.

``cancel`` and ``ping`` run in a concurrency group of their own, beside a running call. A
cancel is recorded by the host (checked before the tool starts and at each yield) and, while
the tool's own code runs, raised into the tool thread as an asynchronous exception (never into
the host's own code: see :mod:`snakepit._hosting.threaded`): it fires at
the next bytecode, not inside a blocking C call (``time.sleep`` included), so such a tool is
stopped by the owner killing the actor after ``cancel_grace``.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ray

from snakepit import shared, telemetry
from snakepit._encoding import element_into
from snakepit._errors import Category, Reason
from snakepit._protocol import TERMINAL, Batch, Boot, Call, Chunk, Failure, FrameReader, Ready, ToWorker, encode_frame, json_ext

if TYPE_CHECKING:
    from snakepit._hosting.threaded import ThreadHost

# A stream's tool runs at most this many messages ahead of what Ray has taken (then it waits).
# One streamed object packs what is at hand, up to _MAX_PER_OBJECT messages or about
# _OBJECT_BYTES: small chunks travel many per object, big ones (arrays) one or a few.
_QUEUE = 32
_MAX_PER_OBJECT = 256
_OBJECT_BYTES = 1 << 20
_TELEMETRY_BUFFER = 10_000  # events kept between two heartbeats


class _Outbox:
    """The host's way out: frames into a list (a plain call, answered at once) or a bounded
    queue the streaming ``run`` drains, each beside the id of the call it ends, if it does.

    A message is encoded as it is sent, in the host's thread: a value msgpack refuses (an int
    beyond 64 bits, a str with a lone surrogate) raises where the host sends it pickled instead,
    as it does on a process worker, not later in Ray's thread, where it would end the actor."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[bytearray, int | None]] = queue.Queue(_QUEUE)
        self.collected: list[bytearray] | None = None

    def send(self, message: Any) -> None:
        frame = encode_frame(message)
        if self.collected is not None:
            self.collected.append(frame)
        else:
            self.queue.put((frame, message.id if isinstance(message, TERMINAL) else None))

    def chunk_writer(self, call_id: int) -> Callable[[Any], None]:
        send = self.send
        return lambda data: send(Chunk(call_id, data))

    def array_writer(self, call_id: int, limit: int, accept_pickle: bool) -> Callable[[Any], bool]:
        # The owner packs this backend's batches (see Delivery.take); asked anyway, each chunk
        # goes as an array of its own, which a batch of up to ``limit`` is.
        send = self.send

        def send_element(value: Any) -> bool:
            element = bytearray()
            if not element_into(value, element, accept_pickle):
                return False
            send(Chunk(call_id, json_ext(b"[" + element + b"]")))
            return True

        return send_element

    def flush(self) -> None:
        pass


_remote: Any = ray.remote  # its overloads do not know every option it takes


@_remote(concurrency_groups={"control": 1})
class SnakepitActor:
    """The actor class; :mod:`.backend` adds the user's ``actor_options``."""

    def __init__(self) -> None:
        self._out = _Outbox()
        self._host: ThreadHost | None = None
        self._telemetry: collections.deque[dict[str, Any]] = collections.deque(maxlen=_TELEMETRY_BUFFER)

    def start(self, boot_frame: bytes) -> tuple[bytes, str, str]:
        """Load and initialise the adapter: a ``Ready`` or ``StartFailed`` frame, and the
        address and the id of the node this actor runs on (nodes may share an address: several
        on one host, containers)."""
        # Ray's workers dump the faulting thread's stack to their log on a fatal signal; every
        # thread's is what tells a crash in a tool's thread apart. (The owner, maybe on another
        # node, cannot read a dead actor's memory: the stacks stay in Ray's worker log.)
        faulthandler.enable(all_threads=True)
        [boot] = FrameReader(ToWorker).feed(boot_frame)
        assert isinstance(boot, Boot)
        for path in reversed(boot.sys_path):  # the owner's paths, where they exist here
            if path not in sys.path and (not path or os.path.isdir(path)):
                sys.path.insert(0, path)
        if os.path.isdir(boot.cwd):  # and its working directory, where it exists here
            os.chdir(boot.cwd)
        # The worker side, imported here: the owner imports this module for the class alone.
        from snakepit._hosting.threaded import ThreadHost

        shared._install(None)  # Ray's object store carries large values: snakepit.shared makes plain arrays here

        self._host = ThreadHost(self._out)  # a cancel reaches the tool as an asynchronous exception
        if boot.telemetry:
            telemetry.install(self._telemetry.append)
        started = self._host.start(boot.adapter, boot.adapter_args)
        if type(started) is Ready:
            started = Ready(os.getpid(), started.tools)
        return bytes(encode_frame(started)), ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()

    def call(self, frame: bytes) -> bytes:
        """Run one call or map batch whose answer is one value: its frames, at once."""
        message = self._message(frame)
        collected: list[Any] = []
        self._out.collected = collected
        try:
            self._run(message)
        finally:
            self._out.collected = None
        return b"".join(collected)

    @ray.method(num_returns="streaming")
    def run(self, frame: bytes) -> Iterator[bytes]:
        """Run one streaming call; yields its answers as frames, as they come."""
        message = self._message(frame)
        threading.Thread(target=self._run, args=(message,), name="snakepit-stream", daemon=True).start()
        call_id = message.id
        pending = self._out.queue
        while True:
            encoded, ends = pending.get()
            frames, size, count, done = [], 0, 0, False
            while True:
                frames.append(encoded)
                size += len(encoded)
                count += 1
                if ends == call_id:
                    done = True
                    break
                if count >= _MAX_PER_OBJECT or size >= _OBJECT_BYTES:
                    break
                try:
                    encoded, ends = pending.get_nowait()
                except queue.Empty:
                    break
            yield b"".join(frames)
            if done:
                return

    def _message(self, frame: bytes) -> Any:
        [message] = FrameReader(ToWorker).feed(frame)
        assert type(message) is Call or type(message) is Batch
        return message

    def _run(self, message: Any) -> None:
        host = self._host
        assert host is not None
        host.bind_thread()  # Ray runs calls on its thread, streams on ours
        try:
            host.run(message)
        except BaseException:  # whatever else interrupted the call: still end it
            self._out.send(
                Failure(message.id, Category.PYTHON_ERROR, Reason.TOOL_EXCEPTION, "the call was interrupted", {}, None)
            )

    @ray.method(concurrency_group="control")
    def cancel(self, ids: list[int]) -> None:
        """Cancel these calls (concurrency group "control": beside the running one)."""
        host = self._host
        if host is not None and host.cancel(ids):
            host.interrupt()

    @ray.method(concurrency_group="control")
    def listen(self, on: bool) -> None:
        """Buffer tools' telemetry for the heartbeats to carry (``on``), or stop."""
        telemetry.install(self._telemetry.append if on else None)

    @ray.method(concurrency_group="control")
    def ping(self, seq: int) -> list[dict[str, Any]]:
        """A heartbeat; its answer carries the telemetry sent since the last one."""
        events = []
        buffered = self._telemetry
        while buffered:
            events.append(buffered.popleft())
        return events

    def stop(self) -> None:
        """The adapter's ``cleanup()``, after the calls queued before it."""
        if self._host is not None:
            self._host.cleanup()

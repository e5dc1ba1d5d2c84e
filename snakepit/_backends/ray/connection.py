"""The owner's connection to one Ray actor.

A call is an ``actor.run`` streaming generator; a reader thread per connection takes the
streamed frames in order, as they come, into a bounded buffer, and marks a pipe readable
whenever there is something to take (or the actor died). So a Ray worker looks to the pool like
a process worker: ``take`` drains the buffer, ``receive`` and ``wait_any`` wait with ``poll``,
``watch`` is ``loop.add_reader`` -- the generic pool's waits work unchanged, and the buffer's
bound, with Ray's generator backpressure behind it, keeps a slow consumer from holding a
whole stream.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from snakepit._protocol import Cancel, FrameReader, FromWorker, Listen, Ping, is_stream_call
from snakepit._seam.backend import Closing, FedByThread, WorkerGone, death_cause

# The reader thread takes at most this much ahead of the consumer, then waits (and Ray's
# generator backpressure holds the actor): in messages, and in bytes for streams of big chunks.
_BUFFERED = 4096
_BUFFERED_BYTES = 16 << 20
_BACKPRESSURE = 8  # streamed objects an actor may run ahead of the reader thread


class RayConnection(FedByThread):
    def __init__(
        self, ray: Any, actor: Any, closing: Closing, on_control: Callable[[str, Any, Any], None], on_death: Callable[[], None]
    ) -> None:
        self._ray = ray
        self.actor = actor
        self.closing = closing
        self.pid: int | None = None
        self.node: str | None = None
        self.node_id: str | None = None
        self.exit_info: dict[str, Any] | None = None
        self.exit_reported = False  # the supervisor was told it ended
        self.broken = False
        self._on_control = on_control  # (kind, ref, argument): the backend watches control calls
        self._on_death = on_death
        self._signal_r, self._signal_w = os.pipe()
        os.set_blocking(self._signal_r, False)
        os.set_blocking(self._signal_w, False)
        self._lock = threading.Condition()
        self._calls: deque[Any] = deque()  # streaming generators, in the order the calls were sent
        self._messages: list[Any] = []
        self._buffered_bytes = 0
        self._died: str | None = None
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="snakepit-ray-reader", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<ray actor pid={self.pid} node={self.node}>"

    # -- sending ---------------------------------------------------------------------------------

    @property
    def ready_fd(self) -> int:
        """The signal pipe: readable when there is something to take, or the actor died."""
        return self._signal_r

    def memory(self) -> int | None:
        return None  # the actor may run on another machine: Ray's dashboard has it

    def spin(self) -> bool:
        return False  # a reply crosses Ray's object store and a reader thread: never microseconds

    def fits(self, size: int) -> bool:
        return True  # Ray moves big arguments itself, without blocking the sender

    def send(self, frame: bytes | bytearray, deadline: float | None = None, attachments: Any = None) -> None:
        with self._lock:
            if self._died is not None:
                raise WorkerGone()
            if is_stream_call(frame):
                call = self.actor.run.options(_generator_backpressure_num_objects=_BACKPRESSURE).remote(bytes(frame))
            else:
                call = self.actor.call.remote(bytes(frame))
            self._calls.append(call)
            self._lock.notify_all()

    def send_control(self, message: Any) -> bool:
        if self._died is not None:
            return False
        if type(message) is Cancel:
            self._on_control("cancel", self.actor.cancel.remote(list(message.ids)), None)
        elif type(message) is Ping:
            self._on_control("ping", self.actor.ping.remote(message.seq), message.seq)
        elif type(message) is Listen:
            self._on_control("listen", self.actor.listen.remote(message.on), None)
        return True

    # -- receiving -------------------------------------------------------------------------------

    def _read(self) -> None:
        reader = FrameReader(FromWorker)
        ray = self._ray
        while True:
            with self._lock:
                while not self._calls and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                call = self._calls[0]
            if isinstance(call, ray.ObjectRef):  # a plain call: one object, then it is done
                ref = call
                with self._lock:
                    self._calls.popleft()
            else:
                try:
                    ref = next(call)
                except StopIteration:
                    with self._lock:
                        self._calls.popleft()
                    continue
                except Exception as exc:  # the actor died (RayActorError), or Ray itself is going
                    self._die(exc)
                    return
            try:
                data = ray.get(ref)
            except Exception as exc:
                self._die(exc)
                return
            messages = reader.feed(data)
            with self._lock:
                self._messages += messages
                self._buffered_bytes += len(data)
                self._signal()
                while (len(self._messages) > _BUFFERED or self._buffered_bytes > _BUFFERED_BYTES) and not self._closed:
                    self._lock.wait()

    def _die(self, exc: BaseException) -> None:
        with self._lock:
            if self._died is None:
                self._died = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            self._signal()
        self._on_death()

    def _signal(self) -> None:
        try:
            if self._signal_w >= 0:
                os.write(self._signal_w, b"!")
        except (BlockingIOError, OSError):  # already readable (full)
            pass

    def take(self, exited: bool = False) -> list[Any]:
        with self._lock:
            try:
                while self._signal_r >= 0 and os.read(self._signal_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
            messages, self._messages = self._messages, []
            self._buffered_bytes = 0
            self._lock.notify_all()
            if not messages and self._died is not None:
                raise WorkerGone()
        return messages

    # -- ending ----------------------------------------------------------------------------------

    @property
    def died(self) -> str | None:
        """Why the actor is gone, once the connection has seen it go."""
        return self._died

    def kill(self) -> None:
        try:
            self._ray.kill(self.actor, no_restart=True)
        except Exception:  # already gone, or Ray is shutting down
            pass

    def exit_status(self) -> dict[str, Any]:
        if self.exit_info is None:
            self.kill()  # what died under a call must not linger half-alive
            error = str(self._died or "the actor was killed")
            oom = "out of memory" in error.lower() or "OutOfMemory" in error  # Ray's memory monitor says so
            self.exit_info = {"exit_code": None, "error": error, "cause": death_cause(None, None, oom)}
        return self.exit_info

    def salvage(self) -> list[Any]:
        return []  # an object the actor streamed arrives whole or not at all: nothing is left to recover

    def mark_dead(self, why: str) -> None:
        """The backend saw the actor go (a control call failed, or it was stopped)."""
        with self._lock:
            if self._died is None:
                self._died = why
            self._signal()

    def close(self) -> None:
        with self._lock:  # no read or write of the signal pipe may reach a number reused since
            self._closed = True
            self._lock.notify_all()
            fds, self._signal_r, self._signal_w = (self._signal_r, self._signal_w), -1, -1
            for fd in fds:
                if fd >= 0:
                    os.close(fd)

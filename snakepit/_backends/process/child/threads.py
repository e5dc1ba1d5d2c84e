"""A worker that runs several calls at once, each on a thread of its own (``threads_per_worker``).

The main thread reads calls and hands them to ``threads`` tool threads, each with its own
:class:`~snakepit._hosting.threaded.ThreadHost` over the one adapter instance. The owner never has
more calls in flight on this process than it has threads (a cancelled call keeps its slot until
it has ended), so a call never waits here for a thread.

Their answers share one pipe, through :class:`SharedOutbox`: the one-thread worker's
:class:`~snakepit._backends.process.child.outbox.Outbox`, whose lock every write takes, direct
ones too, so each message goes in whole, its shared-memory descriptors just before it. Bursts
of chunks are queued and batched in its crash-safe queue, as with one thread: a write and an
owner wake-up per chunk would cost a stream most of its speed. A stream may have at most
``STREAM_WINDOW`` frames unread by the owner, a batch being one frame of at most
``BATCH_BYTES``; its thread then waits for ``Credit``, which the owner grants as its consumer
takes them. So a slow consumer holds back its own stream, never the others: the owner reads
the pipe at once, whatever its callers do.
"""

from __future__ import annotations

import os
import queue
import select
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from snakepit._backends.process import segments
from snakepit._backends.process.child.outbox import Outbox
from snakepit._errors import CallCancelled, Category, Reason
from snakepit._hosting.threaded import ThreadHost
from snakepit._protocol import BATCH_BYTES, STREAM_WINDOW, TERMINAL, Batch, Chunk, Failure, encode_frame


class SharedOutbox(Outbox):
    """The way out of a worker with several tool threads (see the module's docstring): the
    one-thread :class:`Outbox`, bursts batched in its crash-safe queue, with every write under
    its lock, a message's shared-memory descriptors sent just before it enters the stream, and
    each chunk admitted by its stream's credit first."""

    _batch_bytes = BATCH_BYTES

    def __init__(self, fd: int, spill_fd: int, sock: Any, shared: segments.Segments) -> None:
        super().__init__(fd, spill_fd)
        self._sock = sock
        self._pending = threading.local()  # this thread's placed segments, for its next message
        self.share = segments.deferred_sender(shared, self._pending)
        self._fds_turn = threading.Condition(self._lock)  # see _send_pending
        self._fds_sending = False
        self._credit = threading.Condition()
        self._credits: dict[int, int] = {}  # stream id -> frames it may still send
        self._cancelled: set[int] = set()  # streams cancelled while they may wait for credit

    def send(self, message: Any) -> None:
        frame = encode_frame(message)  # may be refused: before any credit is taken
        if type(message) is Chunk:
            self._wait_for_credit(message.id)
        with self._lock:
            self._send_pending()
            if self._wait_for_room(len(frame)):
                self._spill.append(frame)
            else:
                self._write_direct(frame)
        if type(message) in TERMINAL:
            with self._credit:
                self._credits.pop(message.id, None)
                self._cancelled.discard(message.id)

    def _on_enter(self) -> Callable[[], None]:
        return self._send_pending

    def _send_pending(self) -> None:
        """The lock is held and a message of this thread enters the stream: its segments' descriptors
        go first, so that the socket and the pipe stay in step.

        The owner takes descriptors off the socket as it reads their frames, some of which may be
        in the queue: while the socket is full, the lock is let go (the writer thread flushes the
        queue meanwhile), and other threads' descriptors wait for this thread's to be all sent."""
        fds = segments.take_pending(self._pending)
        if not fds:
            return
        while self._fds_sending:
            self._fds_turn.wait()
        self._fds_sending = True
        try:
            segments.send_fds(self._sock, fds, self._wait_for_socket)
        finally:
            self._fds_sending = False
            self._fds_turn.notify_all()

    def _wait_for_socket(self) -> None:
        """The socket is full (lock held): wait for room in it, without the lock."""
        self._lock.release()
        try:
            select.select((), (self._sock,), (), 1.0)
        finally:
            self._lock.acquire()

    def _admit(self, call_id: int) -> tuple[Callable[[], None], Callable[[], None]]:
        """A chunk of ``call_id`` holds a frame of its stream's window before it takes the lock
        (waiting for credit if need be): spent if it starts a frame, kept for the next chunk if
        it joins the batch already open. One frame at most is held unspent, so the owner always
        has the rest of the window to take and grant again (chunks with metadata, sent as
        messages of their own, wait for credit of their own)."""
        held = False
        wait = self._wait_for_credit

        def admit() -> None:
            nonlocal held
            if not held:
                wait(call_id)
                held = True

        def spend() -> None:
            nonlocal held
            held = False

        return admit, spend

    def discard(self) -> None:
        """A call has ended: whatever this thread placed for a message that never went out
        (an error between encoding and sending) is given back, not sent with the next one."""
        segments.release_pending(self._pending)

    # -- credit ------------------------------------------------------------------------------------

    def _wait_for_credit(self, call_id: int) -> None:
        """Take one frame of the stream's window, waiting for the owner's credit if need be; a
        cancel meanwhile raises ``CallCancelled`` here, and the chunk's segments are given back."""
        with self._credit:
            left = self._credits.get(call_id, STREAM_WINDOW)
            while left <= 0:
                if call_id in self._cancelled:
                    segments.release_pending(self._pending)
                    raise CallCancelled()  # the stream ends: the owner no longer reads it
                self._credit.wait()
                left = self._credits.get(call_id, STREAM_WINDOW)
            self._credits[call_id] = left - 1

    def grant(self, call_id: int, count: int) -> None:
        """From the control thread: the owner has taken ``count`` more frames of ``call_id``."""
        with self._credit:
            if call_id in self._credits:
                self._credits[call_id] += count
                self._credit.notify_all()

    def cancel(self, ids: list[int]) -> None:
        """From the control thread: these calls are cancelled; a stream among them waiting for
        credit stops waiting."""
        with self._credit:
            self._cancelled.update(i for i in ids if i in self._credits)
            self._credit.notify_all()


class ToolThreads:
    """``count`` tool threads, each running the calls it is handed on its own host."""

    def __init__(self, out: SharedOutbox, count: int) -> None:
        self._out = out
        self.hosts = [ThreadHost(out) for _ in range(count)]
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._current = threading.local()  # the host of the calling thread, if a tool thread
        self._threads: list[threading.Thread] = []

    def start(self, adapter: Any, adapter_args: Any) -> Any:
        """Start the adapter (on the first host; the others share it): ``Ready`` or ``StartFailed``."""
        first = self.hosts[0]
        started = first.start(adapter, adapter_args)
        for host in self.hosts[1:]:
            host.share_adapter(first)
        return started

    def adapter_class(self) -> type:
        return type(self.hosts[0]._adapter)

    def run_threads(self) -> None:
        for index, host in enumerate(self.hosts):
            thread = threading.Thread(target=self._serve, args=(host,), name=f"snakepit-tool-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, message: Any) -> None:
        if type(message) is Batch:  # its raw items are in the reader's buffer, which the next read reuses
            message.items = msgspec.Raw(bytes(message.items))
        self._calls.put(message)

    def cancel(self, ids: list[int]) -> None:
        for host in self.hosts:
            if host.cancel(ids):
                host.interrupt()

    def shield(self) -> Any:
        """The shield of the calling thread's host (a tool logging), else none."""
        host = getattr(self._current, "host", None)
        return host.shield() if host is not None else _NO_SHIELD

    def stop(self) -> None:
        """After the calls handed out so far: end the threads."""
        for _ in self._threads:
            self._calls.put(None)
        for thread in self._threads:
            thread.join()

    def _serve(self, host: ThreadHost) -> None:
        host.bind_thread()
        self._current.host = host
        while True:
            message = self._calls.get()
            if message is None:
                return
            try:
                host.run(message)
            except BaseException as exc:  # escaped the host: the call still gets its answer
                self._out.discard()
                try:
                    self._out.send(
                        Failure(
                            message.id,
                            Category.PYTHON_ERROR,
                            Reason.TOOL_EXCEPTION,
                            f"the call was interrupted: {type(exc).__name__}: {exc}",
                            {},
                            None,
                        )
                    )
                except BaseException:
                    os._exit(1)  # the thread cannot answer: end the process, which the owner sees
            else:
                self._out.discard()


class _NoShield:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SHIELD = _NoShield()

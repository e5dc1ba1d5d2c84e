"""The worker's way out: ordered messages to the owner, prompt when it keeps up, batched in bursts.

A message is written to the pipe by the worker's main thread the moment it exists (a blocking
``write``: a slow reader slows the tool down instead of growing a buffer). A chunk yielded less
than ``_COALESCE`` after the previous direct write is part of a burst: writing each one would
cost a system call and an owner wake-up per chunk, so it is queued instead, consecutive chunks of
the stream packed into one ``Chunks`` frame, and a writer thread sends everything queued in one
``write`` as soon as it next holds the GIL (within the interpreter's switch interval, 5 ms by
default, or at once if the tool blocks). Messages keep their order: while anything is queued,
every message queues behind it.

The queue is a :mod:`~snakepit._backends.process.spill` segment shared with the owner, so chunks queued when
the worker dies abruptly are still delivered. A yield followed by long work is never held back:
either it was written directly, or the writer thread sends it while the work runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

import msgspec

from snakepit._backends.process.spill import SpillWriter
from snakepit._encoding import element_into, element_writer
from snakepit._protocol import ARRAY_BYTES, HEADER, KEEP_BUFFER, FrameWriter, Share, chunk_layout

_COALESCE = 50e-6
_FULL = -(1 << 65)  # the key of an open batch that takes no more items (no writer's: see _stream_writer)


class Outbox:
    def __init__(self, fd: int, spill_fd: int, share: Share | None = None) -> None:
        self._fd = fd
        if share is not None:
            self.share = share  # large values' buffers go beside the frames (see ..segments)
        os.set_blocking(fd, True)
        self._writer = FrameWriter()
        self._spill = SpillWriter(spill_fd)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._sent = 0  # stream bytes in the pipe so far; the spill's base when it starts a queue
        self._flushed = 0  # queued bytes the writer thread has written
        self._last_direct = 0.0
        self._thread = threading.Thread(target=self._write_loop, name="snakepit-outbox", daemon=True)
        self._thread.start()

    def send(self, message: msgspec.Struct) -> None:
        """Send any message, after everything sent before it."""
        frame = self._writer.frame(message)
        spill = self._spill
        if spill.committed:  # something is queued: this message queues behind it
            with self._lock:
                if self._wait_for_room(len(frame)):
                    spill.append(frame)
                    return
        # Nothing is queued, and only this thread queues: the writer thread is idle, and stays so.
        self._write_direct(frame)

    def chunk_writer(self, call_id: int) -> Callable[[Any], None]:
        """A function sending one plain, wire-encoded stream item of ``call_id`` per call."""
        return self._stream_writer(call_id, False, 1 << 62)

    def array_writer(self, call_id: int, limit: int, accept_pickle: bool) -> Callable[[Any], bool]:
        """A function sending one chunk of ``call_id``'s batched stream per call, as a JSON
        element (see :func:`~snakepit._encoding.element_into`; False, and nothing sent, for one
        that cannot be): the elements of a burst, up to ``limit`` (and ``ARRAY_BYTES``), go as
        one array, built in the queue (see :mod:`~snakepit._backends.process.spill`); an element
        written at once goes as an array of its own."""
        return self._stream_writer(call_id, True, limit, accept_pickle)

    def _stream_writer(self, call_id: int, array: bool, limit: int, accept_pickle: bool = False) -> Callable[[Any], Any]:
        # Each chunk's envelope is encoded once for the stream (see protocol.chunk_layout).
        frame, tail, batch_prefix, array_prefix = chunk_layout(call_id)
        frame_start = len(frame)
        # The batch an item may join: an array batch has a key of its own, so that no plain item
        # of the same call (a chunk too large to be an element) ever lands in it.
        key, prefix = (~call_id, array_prefix) if array else (call_id, batch_prefix)
        batch_bytes = min(self._batch_bytes, ARRAY_BYTES) if array else self._batch_bytes

        encode_into = msgspec.msgpack.Encoder().encode_into
        write_element = element_writer(accept_pickle) if array else None
        pack_header = HEADER.pack_into
        item = bytearray()
        acquire, release = self._lock.acquire, self._lock.release
        spill = self._spill
        data_area, header, capacity = spill.data, spill.header, spill.capacity
        admit, spend = self._admit(call_id)
        enter = self._on_enter()
        queue = self._queue_item

        def write_frame(data: Any) -> None:
            nonlocal item, frame
            encode_into(b"[" + item[:-1] + b"]" if array else data, frame, frame_start)
            frame.extend(tail)
            pack_header(frame, 0, len(frame) - HEADER.size)
            self._write_direct(frame)
            if len(frame) > KEEP_BUFFER:  # a big chunk: do not keep its size for the rest of the stream
                frame = bytearray(frame[:frame_start])
                item = bytearray()

        def send_chunk(data: Any) -> bool:
            if not array:
                encode_into(data, item, 0)
            elif write_element is not None and type(data) is not float:
                try:
                    write_element(data, item)
                except Exception:
                    element_into(data, item, accept_pickle)  # raises the serialization_error it is
                    raise
                item.append(0x2C)  # the comma the next element (or the closing "]") follows
            elif element_into(data, item, accept_pickle):
                item.append(0x2C)
            else:
                return False
            if admit is not None:
                admit()
            acquire()  # not ``with lock``: the context-manager protocol doubles the lock's cost
            try:
                if enter is not None:
                    enter()
                # The hot path of a burst: this stream's batch is open, append the item to it
                # (SpillWriter.add, inlined).
                committed = spill.committed
                end = committed + len(item)
                if spill.batch_call == key and end <= capacity and end - spill.batch_at <= batch_bytes:
                    data_area[committed:end] = item
                    spill.committed = end
                    spill.count += 1
                    header[1] = end
                    if array and spill.count >= limit:
                        spill.batch_call = _FULL  # no more elements join it
                    return True
                if spend is not None:  # the item starts a frame of its own, or a batch
                    spend()
                if queue(key, item, prefix, array):
                    if array and limit == 1:
                        spill.batch_call = _FULL
                    return True
                if enter is not None:  # several threads write: a frame goes in whole, under the lock
                    write_frame(data)
                    return True
            finally:
                release()
            write_frame(data)
            return True

        return send_chunk

    # One thread sends (the worker's main thread): nothing to wait for before a chunk, nothing
    # to do on entering the lock, direct writes need no lock, and a batch may fill the queue.
    # See ``child.threads.SharedOutbox``.
    _batch_bytes = 1 << 62

    def _on_enter(self) -> Callable[[], None] | None:
        """What a chunk does on taking the lock, before it enters the stream."""
        return None

    def _admit(self, call_id: int) -> tuple[Callable[[], None] | None, Callable[[], None] | None]:
        """What a chunk of ``call_id`` does before the lock, and when it starts a frame."""
        return None, None

    def _queue_item(self, key: int, item: bytes | bytearray, batch_prefix: bytes, array: bool = False) -> bool:
        """Queue one encoded stream item (lock held), in a new batch, if the queue is in use or
        this is a burst (the last direct write was less than ``_COALESCE`` ago); False: the
        caller writes it directly, now."""
        spill = self._spill
        if self._wait_for_room(len(item) + len(batch_prefix)):
            spill.open_batch(key, batch_prefix, array)
            spill.add(item)
            return True
        now = monotonic()
        if now - self._last_direct < _COALESCE and len(item) + len(batch_prefix) + 64 <= spill.capacity:
            spill.start(self._sent)
            spill.open_batch(key, batch_prefix, array)
            spill.add(item)
            self._cond.notify()
            return True
        self._last_direct = now
        return False

    def flush(self) -> None:
        """Wait until everything queued is in the pipe."""
        with self._lock:
            while self._spill.committed:
                self._cond.wait()

    # -- main thread, lock held ----------------------------------------------------------------------

    def _wait_for_room(self, size: int) -> bool:
        """True if the queue is in use and has room for ``size`` more bytes (after waiting).

        False when the queue is empty: the writer thread is idle and this thread may write.
        """
        spill = self._spill
        if not spill.committed:
            return False
        if size + 64 > spill.capacity:  # too big to queue: let the queue drain, then write it
            while spill.committed:
                self._cond.wait()
            return False
        while spill.committed + size + 64 > spill.capacity:  # back-pressure
            self._cond.wait()
        return bool(spill.committed)

    def _write_direct(self, frame: bytearray) -> None:
        write_or_exit(self._fd, frame)
        self._sent += len(frame)

    # -- writer thread -----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        spill = self._spill
        while True:
            with self._lock:
                while spill.committed == self._flushed:
                    self._cond.wait()
                spill.close_batch()  # what is written must be complete frames
                start, end = self._flushed, spill.committed
            view = spill.view(start, end)
            write_or_exit(self._fd, view)
            view.release()
            with self._lock:
                self._sent += end - start
                self._flushed = end
                if end == spill.committed:
                    spill.clear()
                    self._flushed = 0
                    self._cond.notify_all()


def write_or_exit(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data``; if the owner is gone, end the worker: nobody will read it."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:  # the owner is gone: nobody will read what we produce
        os._exit(0)

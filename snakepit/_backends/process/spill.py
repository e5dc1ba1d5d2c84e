"""A shared-memory send queue that survives its writer's death.

A worker streaming small chunks quickly cannot afford one ``write`` (and one owner wake-up) per
chunk, so bursts are queued and written to the pipe in bulk, consecutive chunks of a stream
packed into one ``Chunks`` frame. But a queued chunk must not die with the worker: when a worker
is killed (SIGKILL, segfault, ``os._exit``), the owner still has to receive every chunk yielded
before the death.

So the queue is a shared mapping (a memfd, or an unlinked temporary file) that both processes map.
The owner only ever *reads* it after the worker has exited, so no memory ordering between live
processes is involved. The header says where the queued bytes sit in the response stream:

* ``base``: stream offset of the first queued byte (every byte before it is in the pipe);
* ``committed``: how many queued bytes are complete;
* ``batch_at``: the offset of the batch frame still being filled (its frame length and item
  count are patched into the frame only when it is closed; after a death the owner finds the
  count by decoding).

A batched stream's batch (see ``Outbox.array_writer``) is a ``Chunks`` frame holding one item, a
``bin`` whose bytes are a JSON array the worker writes element by element, each followed by a
comma: closing it turns the last comma into ``]`` and patches the ``bin``'s length, so queued
bytes always end at a whole element, and the owner closes an open one the same way.

After the death, the owner knows how many stream bytes it read from the pipe (``received``) and
takes the queued bytes from ``received - base`` to ``committed``, closing an open batch in its
copy: nothing lost, nothing twice, whatever the worker was doing when it died (even half-way
through a ``write``). An open batch is never partly written: the writer closes it first.

Updates are ordered so that a death between two of them never claims bytes that are not there:
item bytes are copied before ``committed`` moves, and the queue is emptied by zeroing
``committed`` before ``base`` moves.

The segment also carries the worker's last words: past the queue area, :mod:`faulthandler`
writes every thread's Python stack when a fatal signal (SIGSEGV, SIGABRT, SIGBUS, SIGFPE,
SIGILL) ends the worker, and the owner reads it at the post-mortem (:func:`fault_log`): the
``python_stack`` of its ``worker_crashed``. A SIGKILL (the OOM killer's too) leaves none.
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import struct
from collections.abc import Callable

import msgspec

from snakepit._protocol import HEADER as FRAME_HEADER

SIZE = 2 << 20
_HEADER = struct.Struct("=QQqQQ")  # base, committed, batch_at, prefix length, array: native, like the views
# Then a word of another kind: the bytes of shared segments the worker's own arrays hold (see
# segments.Segments.allocate), which the owner counts in the worker's memory.
_LENT = struct.Struct("=Q")
LENT_AT = _HEADER.size
HEADER_SIZE = LENT_AT + _LENT.size
_BATCH = struct.Struct("=qQQ")  # batch_at, prefix length, array
_COUNT = struct.Struct(">BI")  # 0xdd + uint32: a msgpack array32 header
_BIN_LENGTH = struct.Struct(">I")  # of a bin32, whose header ends an array batch's prefix (with its "[")
NO_BATCH = -1


def create(size: int = SIZE) -> int:
    """A descriptor for a new zero-filled shared segment (owner side, before spawning)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("snakepit-spill", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux
        import tempfile

        with tempfile.TemporaryFile() as handle:
            fd = os.dup(handle.fileno())
    os.ftruncate(fd, HEADER_SIZE + size)
    return fd


def lent_reporter(fd: int) -> Callable[[int], object]:
    """In the worker: how to publish the bytes of shared segments its arrays hold (a descriptor
    of its own, kept for the process's life; a write each time the figure changes)."""
    own = os.dup(fd)
    return lambda total: os.pwrite(own, _LENT.pack(total), LENT_AT)


def lent(fd: int) -> int:
    """What the worker published with :func:`lent_reporter` (owner side); 0 if unreadable."""
    try:
        return _LENT.unpack(os.pread(fd, _LENT.size, LENT_AT))[0]
    except (OSError, struct.error):
        return 0


FAULT_LOG_AT = HEADER_SIZE + SIZE  # where the fault log starts: past the queue (the file grows as it is written)
_FAULT_LOG_MAX = 64 << 10


def record_faults(fd: int) -> None:
    """In the worker: have :mod:`faulthandler` write every thread's stack to the segment's fault
    log on a fatal signal. A descriptor of its own, whose file offset sits at the log (the queue
    is written through a mapping, never at that offset); kept open for the process's life."""
    log = os.dup(fd)
    os.lseek(log, FAULT_LOG_AT, os.SEEK_SET)
    faulthandler.enable(file=log, all_threads=True)


def fault_log(fd: int) -> str | None:
    """The stacks a dead worker's faulthandler wrote (owner side), or None."""
    try:
        data = os.pread(fd, _FAULT_LOG_MAX, FAULT_LOG_AT)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").strip()
    return text or None


def close_batch_in(buffer: bytearray | mmap.mmap, batch_at: int, end: int, count: int, prefix_len: int) -> None:
    """Patch the length and item count of the batch frame at ``batch_at`` (ending at ``end``)."""
    FRAME_HEADER.pack_into(buffer, batch_at, end - batch_at - FRAME_HEADER.size)
    _COUNT.pack_into(buffer, batch_at + prefix_len - _COUNT.size, 0xDD, count)


def close_array_in(buffer: bytearray | mmap.mmap, batch_at: int, end: int, prefix_len: int) -> None:
    """Close the array batch at ``batch_at``, whose last element's comma is the byte before
    ``end``: the comma becomes ``]``, and the frame's and the ``bin``'s lengths are patched (its
    item count, one, is in its prefix)."""
    buffer[end - 1] = 0x5D  # "]"
    FRAME_HEADER.pack_into(buffer, batch_at, end - batch_at - FRAME_HEADER.size)
    _BIN_LENGTH.pack_into(buffer, batch_at + prefix_len - 1 - _BIN_LENGTH.size, end - (batch_at + prefix_len - 1))


class SpillWriter:
    """The worker's view: queue frames and batch items; mark them written."""

    __slots__ = (
        "map",
        "data",
        "capacity",
        "committed",
        "count",
        "batch_at",
        "batch_call",
        "batch_prefix_len",
        "batch_array",
        "header",
    )

    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, size)
        os.close(fd)
        self.capacity = size - HEADER_SIZE
        self.committed = 0  # queued bytes
        self.count = 0  # items in the open batch
        self.batch_at = NO_BATCH
        self.batch_call = -1
        self.batch_prefix_len = 0
        self.batch_array = False  # the open batch is a JSON array (see the module's docstring)
        # Views for the hot path: ``header[1] = n`` publishes ``committed`` with one aligned
        # 8-byte store; ``data`` is the queue area.
        self.header = memoryview(self.map)[:HEADER_SIZE].cast("Q")
        self.data = memoryview(self.map)[HEADER_SIZE:]

    def start(self, base: int) -> None:
        """The queue was empty; its first byte will be stream byte ``base``."""
        _HEADER.pack_into(self.map, 0, base, 0, NO_BATCH, 0, 0)

    def append(self, frame: bytes | bytearray | memoryview) -> None:
        """Queue a whole frame (closing the open batch first)."""
        self.close_batch()
        self.put(frame)
        self.header[1] = self.committed

    def open_batch(self, key: int, prefix: bytes, array: bool = False) -> None:
        """Start a ``Chunks`` frame, for the writer of ``key``; ``prefix`` ends with an array32
        header, or for an ``array`` batch with a bin32 header and ``[``."""
        self.close_batch()
        self.batch_at = self.committed
        self.batch_call = key
        self.batch_prefix_len = len(prefix)
        self.batch_array = array
        self.count = 0
        self.put(prefix)
        _BATCH.pack_into(self.map, 16, self.batch_at, len(prefix), array)
        self.header[1] = self.committed

    def add(self, item: bytes | bytearray) -> None:
        """Append one encoded item to the open batch."""
        self.put(item)
        self.count += 1
        self.header[1] = self.committed

    def put(self, data: bytes | bytearray | memoryview) -> None:
        end = self.committed + len(data)
        self.data[self.committed : end] = data
        self.committed = end

    def close_batch(self) -> None:
        if self.batch_at == NO_BATCH:
            return
        at, end = HEADER_SIZE + self.batch_at, HEADER_SIZE + self.committed
        if self.batch_array:
            close_array_in(self.map, at, end, self.batch_prefix_len)  # an element is added with the batch
        else:
            close_batch_in(self.map, at, end, self.count, self.batch_prefix_len)
        self.batch_at = NO_BATCH
        self.batch_call = -1
        _BATCH.pack_into(self.map, 16, NO_BATCH, 0, 0)

    def view(self, start: int, end: int) -> memoryview:
        return self.data[start:end]

    def clear(self) -> None:
        """Everything queued went into the pipe."""
        self.header[1] = 0
        self.committed = 0


def salvage(fd: int, received: int) -> bytes:
    """The queued bytes a dead worker never wrote, given ``received`` stream bytes were read."""
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as view:
            base, committed, batch_at, prefix_len, array = _HEADER.unpack_from(view, 0)
            committed = min(committed, len(view) - HEADER_SIZE)
            start = received - base
            if committed == 0 or start < 0 or start >= committed:
                return b""
            tail = bytearray(view[HEADER_SIZE + start : HEADER_SIZE + committed])
    except (OSError, ValueError):
        return b""
    at = batch_at - start
    if batch_at != NO_BATCH and at >= 0 and at + prefix_len <= len(tail):
        if not array:
            close_batch_in(tail, at, len(tail), _count_items(tail, at, prefix_len), prefix_len)
        elif len(tail) > at + prefix_len:  # its elements end with commas (see the module's docstring)
            close_array_in(tail, at, len(tail), prefix_len)
        else:  # opened, no element in it yet: nothing to deliver
            del tail[at:]
    return bytes(tail)


def _count_items(tail: bytearray, at: int, prefix_len: int) -> int:
    """How many whole msgpack items follow the open batch's prefix (a rare, post-mortem path).

    With too small a count, decoding the array leaves trailing bytes; with too large a count it
    runs out: the right count is found by bisection.
    """
    items = bytes(tail[at + prefix_len :])
    low, high = 0, len(items)  # every item is at least one byte
    decode = msgspec.msgpack.decode
    while low < high:
        guess = (low + high + 1) // 2
        try:
            decode(_COUNT.pack(0xDD, guess) + items)
            return guess
        except msgspec.DecodeError as exc:
            if "truncated" in str(exc).lower():
                high = guess - 1
            else:
                low = guess
    return low

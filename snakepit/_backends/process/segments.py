"""Large values between owner and worker through shared memory: one copy, not five.

A value holding big buffers (a numpy array, anything pickled with protocol-5 out-of-band
buffers; a large ``bytes`` or ``bytearray``) would otherwise be copied into the pickle, into the
frame, through the pipe in 1 MiB reads, and re-assembled on the other side. Instead each buffer of
at least :data:`~snakepit._protocol.SHARE_THRESHOLD` bytes is copied once into a *segment*, an
anonymous memory file (``memfd``), whose descriptor travels over the worker's Unix socket
(``SCM_RIGHTS``: pipes cannot carry descriptors); the frame says how many follow. The receiver
maps the segment and unpickles the value *onto* the mapping: a numpy array is backed by shared
memory, with no copy on receipt. ``bytes`` and ``bytearray`` values are copied out of the mapping
on receipt, to be the types they were sent as.

A sender reuses its segments. Fresh memory costs more than the copy itself (the kernel allocates
and zeroes every page, then maps it page by page: about 1.5 GB/s here, against 10 GB/s for a copy
into memory already in place). The first byte of a segment says whether the receiver still holds
the value placed in it: set by the sender when it places one, cleared by the receiver when that
value is dropped (a finalizer on the buffer the value was built on). A sender reuses only cleared
segments, keeps at most :data:`CACHE_LIMIT` bytes of unused ones, and releases any left unused
for :data:`IDLE_RELEASE` seconds (a thread of its own wakes to do so while it has some): memory
a burst of large values needed goes back to the system soon after. A receiver maps each value
it is sent (pre-faulted, in one go) and unmaps it when the value is dropped.

Nothing leaks. A memfd has no name (unlike ``/dev/shm`` files, which outlive a SIGKILL): it
lives while a descriptor or a mapping refers to it. Descriptors in flight live in the socket's
queue until received or until the socket is closed; a value's descriptors are sent before its
frame, so the receiver of a frame always finds them there, and a frame read only to be discarded
(a drained stream) takes them off the queue too. Each side's segments and mappings end with its
connection (the owner's) or its process (the worker's).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import mmap
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgspec
from msgspec.msgpack import Ext

from snakepit._protocol import SHARED_EXT, Shared, received_ext

CACHE_LIMIT = 1 << 30  # bytes of unused segments a sender keeps for reuse
IDLE_RELEASE = 1.0  # seconds after which a sender releases a segment nothing was placed in
_PAGE = 4096
_HEADER = 2 * _PAGE  # room for the "held by the receiver" byte, and for aligning the data (see _offset)
_GRAIN = 1 << 20  # segment sizes are multiples of this: one segment serves similar sizes
_MAX_FDS = 250  # per message (the kernel's SCM_MAX_FD is 253)
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(tuple[str, bytes, list[tuple[int, int]]]).decode
_POPULATE = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class _Segment:
    __slots__ = ("fd", "map", "capacity", "placed_at")

    def __init__(self, size: int) -> None:
        self.placed_at = 0.0
        self.capacity = -(-(size + _HEADER) // _GRAIN) * _GRAIN
        self.fd = os.memfd_create("snakepit-value", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.capacity)
            self.map = mmap.mmap(self.fd, self.capacity, flags=_POPULATE)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def held(self) -> bool:
        return self.map[0] != 0

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class Segments:
    """A sender's segments: ``place`` copies a buffer into an unused one (made if none fits).
    Thread-safe: the owner's callers place their arguments concurrently."""

    def __init__(self, limit: int = CACHE_LIMIT, idle: float = IDLE_RELEASE) -> None:
        self._limit = limit
        self._idle = idle
        self._all: list[_Segment] = []
        self._changed = threading.Condition()
        self._releaser: threading.Thread | None = None
        self._closed = False

    def place(self, buffer: memoryview) -> tuple[_Segment, int]:
        """Copy ``buffer`` into a segment marked held (until its receiver drops the value); the
        segment, and where in it the bytes start."""
        size = buffer.nbytes
        with self._changed:
            best = None
            for segment in self._all:
                if segment.capacity >= size + _HEADER and not segment.held and (best is None or segment.capacity < best.capacity):
                    best = segment
            if best is None:
                best = _Segment(size)
                self._all.append(best)
                self._release_unused(keep=best, limit=self._limit)
                if self._releaser is None:
                    self._releaser = threading.Thread(target=self._release_idle, name="snakepit-segments", daemon=True)
                    self._releaser.start()
                self._changed.notify()
            best.map[0] = 1
            best.placed_at = time.monotonic()
        offset = _offset(buffer)
        best.map[offset : offset + size] = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        return best, offset

    def _release_unused(self, keep: _Segment | None = None, limit: int = 0, before: float | None = None) -> None:
        """Release unused segments (lock held): the oldest beyond ``limit`` bytes, or those
        nothing was placed in since ``before``."""
        unused = [s for s in self._all if s is not keep and not s.held]
        total = sum(s.capacity for s in unused)
        for segment in unused:
            if total <= limit and (before is None or segment.placed_at > before):
                continue
            total -= segment.capacity
            self._all.remove(segment)
            segment.close()

    def _release_idle(self) -> None:
        """The releaser thread: sleeps while there are no segments, else wakes now and then."""
        with self._changed:
            while not self._closed:
                if not self._all:
                    self._changed.wait()
                    continue
                self._changed.wait(self._idle)
                if not self._closed:
                    self._release_unused(limit=self._limit, before=time.monotonic() - self._idle)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            segments, self._all = self._all, []
            self._changed.notify()
        for segment in segments:
            segment.close()


def _offset(buffer: memoryview) -> int:
    """Where to put ``buffer``'s bytes in a segment: at the same offset within a page as they
    have in the sender's memory. A copy whose destination sits a few cache lines past its source
    (mod 4 KiB) runs at a third of the speed (the processor takes the stores for loads'
    dependencies: "4K aliasing"), and arrays start at odd offsets (malloc's 16-byte header)."""
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):  # read-only (bytes): malloc's usual alignment
        address = 16
    return _PAGE + address % _PAGE


def _view(fd: int, size: int, offset: int) -> memoryview:
    """The ``size`` bytes placed at ``offset`` in the segment ``fd``: a writable view on a
    mapping of it (which ends with its last user), whose end marks the segment unused."""
    length = os.fstat(fd).st_size
    if not _PAGE <= offset < _HEADER or length < offset + size:
        raise ValueError(f"a shared segment of {length} bytes cannot hold {size} at {offset}")
    try:
        segment = mmap.mmap(fd, length, flags=_POPULATE)
    except OSError as exc:
        if exc.errno == errno.ENOMEM:  # no address space left (a memory limit): what a copy would raise
            raise MemoryError(f"cannot map a shared value of {size} bytes") from None
        raise
    holder = (ctypes.c_char * size).from_buffer(segment, offset)
    weakref.finalize(holder, _release, segment)
    return memoryview(holder).cast("B")


def _release(segment: mmap.mmap) -> None:
    try:
        segment[0] = 0
    except ValueError:  # closed
        pass


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    """Pass ``fds`` over ``sock`` (blocking: a receiver that lags holds the sender back)."""
    for start in range(0, len(fds), _MAX_FDS):
        socket.send_fds(sock, [b"s"], fds[start : start + _MAX_FDS])


def _header(kind: str, data: bytes, buffers: list[memoryview], offsets: list[int]) -> Ext:
    return Ext(SHARED_EXT, _ENCODE((kind, data, [(b.nbytes, offset) for b, offset in zip(buffers, offsets)])))


class Attachments:
    """One call's large arguments, placed before a worker is chosen (the owner's side), sent with
    the call. Placed segments are held for their receiver; a call dropped unsent (refused,
    interrupted) gives them back."""

    __slots__ = ("_segments", "placed", "sent")

    def __init__(self, segments: Segments) -> None:
        self._segments = segments
        self.placed: list[_Segment] = []
        self.sent = False

    @property
    def fds(self) -> list[int]:
        return [segment.fd for segment in self.placed]

    def share(self, kind: str, data: bytes, buffers: list[memoryview]) -> Ext:
        placed = [self._segments.place(b) for b in buffers]
        self.placed += [segment for segment, _ in placed]
        return _header(kind, data, buffers, [offset for _, offset in placed])

    def __del__(self) -> None:
        if not self.sent:
            for segment in self.placed:
                _release(segment.map)


def sender(sock: socket.socket, segments: Segments) -> Callable[[str, bytes, list[memoryview]], Ext]:
    """``share`` for the worker: a value's segments are sent the moment it is encoded, before its
    frame is written or queued, so that socket and pipe stay in step."""

    def share(kind: str, data: bytes, buffers: list[memoryview]) -> Ext:
        placed = [segments.place(b) for b in buffers]
        send_fds(sock, [segment.fd for segment, _ in placed])
        return _header(kind, data, buffers, [offset for _, offset in placed])

    return share


def deferred_sender(segments: Segments, pending: threading.local) -> Callable[[str, bytes, list[memoryview]], Ext]:
    """``share`` for a worker running calls on several threads: a value's segments are placed
    at once, but wait in ``pending.segments`` (this thread's) until its message goes out, when
    their descriptors are sent just before its frame, under the same lock (see
    ``child.threads.SharedOutbox``): the socket and the pipe stay in step across threads. A
    message that never goes out gives its segments back with :func:`release_pending`."""

    def share(kind: str, data: bytes, buffers: list[memoryview]) -> Ext:
        placed = [segments.place(b) for b in buffers]
        waiting = getattr(pending, "segments", None)
        if waiting is None:
            waiting = pending.segments = []
        waiting.extend(segment for segment, _ in placed)
        return _header(kind, data, buffers, [offset for _, offset in placed])

    return share


def take_pending(pending: threading.local) -> list[int]:
    """The descriptors this thread's next message goes with (see :func:`deferred_sender`)."""
    waiting = getattr(pending, "segments", None)
    if not waiting:
        return []
    pending.segments = None
    return [segment.fd for segment in waiting]


def release_pending(pending: threading.local) -> None:
    """This thread's message will not go out: its placed segments are free again."""
    waiting = getattr(pending, "segments", None)
    pending.segments = None
    for segment in waiting or ():
        _release(segment.map)


def receiver(sock: socket.socket) -> Callable[[int, memoryview], Any]:
    """The ``ext_hook`` of a frame reader on this socket's side: a shared value's segments are
    taken off the socket and mapped as its frame is decoded; other extensions pass unchanged."""
    pending: collections.deque[int] = collections.deque()

    def take(count: int) -> list[int]:
        while len(pending) < count:
            try:
                _, fds, _, _ = socket.recv_fds(sock, 1, _MAX_FDS, socket.MSG_DONTWAIT)
            except BlockingIOError:
                raise ValueError("a shared value's segments did not arrive with its frame") from None
            if not fds:
                raise ValueError("the socket closed before a shared value's segments arrived")
            pending.extend(fds)
        return [pending.popleft() for _ in range(count)]

    def hook(code: int, data: memoryview) -> Any:
        if code != SHARED_EXT:
            return received_ext(code, data)
        kind, pickle_data, placements = _DECODE(data)
        fds = take(len(placements))
        try:
            return Shared(kind, pickle_data, [_view(fd, size, offset) for fd, (size, offset) in zip(fds, placements)])
        finally:
            for fd in fds:
                os.close(fd)

    return hook

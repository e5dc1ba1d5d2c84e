"""Large values between owner and worker through shared memory: one copy, or none.

A value holding big buffers (a numpy array, anything pickled with protocol-5 out-of-band
buffers; a large ``bytes`` or ``bytearray``) would otherwise be copied into the pickle, into the
frame, through the pipe in 1 MiB reads, and re-assembled on the other side. Instead each buffer of
at least :data:`~snakepit._protocol.SHARE_THRESHOLD` bytes is copied once into a *segment*, an
anonymous memory file (``memfd``), whose descriptor travels over the worker's Unix socket
(``SCM_RIGHTS``: pipes cannot carry descriptors); the frame says how many follow. The receiver
maps the segment and unpickles the value *onto* the mapping: a numpy array is backed by shared
memory, with no copy on receipt. ``bytes`` and ``bytearray`` values are copied out of the mapping
on receipt, to be the types they were sent as.

No copy at all for a buffer that is in a segment already: :func:`allocate` lends this process's
segments to arrays built on them (:mod:`snakepit.shared`), and such a buffer is *delivered by
reference* -- the descriptor goes with where the buffer lies in the segment, the receiver maps
the same pages, read-only, and the array sent becomes read-only too: a value delivered never
changes under its receiver.

The first page of a segment holds its *slots*, a byte per delivery of what it holds: set by the
sender when it delivers, cleared by the receiver when that value is dropped (a finalizer on the
buffer the value was built on). A copy takes slot 0; each delivery by reference takes a free one.
A segment is reused or released only once every slot is clear and, if it was lent, once the
arrays built on it are gone (a finalizer too). A receiver that dies cannot clear its slots: the
owner clears those it delivered over a connection when that connection closes (:func:`forget`).

A sender reuses its segments. Fresh memory costs more than the copy itself (the kernel allocates
and zeroes every page, then maps it page by page: about 1.5 GB/s here, against 10 GB/s for a copy
into memory already in place). It keeps at most :data:`CACHE_LIMIT` bytes of unused ones, and
releases any left unused for :data:`IDLE_RELEASE` seconds. A receiver maps each segment it is
sent (pre-faulted, in one go: for 1 GiB that costs as much as copying it) and keeps the mapping
while values use it and for :data:`IDLE_RELEASE` seconds after (:class:`Mappings`), so that a
segment sent again is not mapped again. One thread of the process (:class:`_Sweeper`) wakes to
release both while there are some: memory a burst of large values needed goes back to the
system soon after.

Nothing leaks. A memfd has no name (unlike ``/dev/shm`` files, which outlive a SIGKILL): it
lives while a descriptor or a mapping refers to it. Descriptors in flight live in the socket's
queue until received or until the socket is closed; a value's descriptors are sent before its
frame, so the receiver of a frame always finds them there, and a frame read only to be discarded
(a drained stream) takes them off the queue too. Each side's segments and mappings end with its
connection (the owner's) or its process (the worker's).
"""

from __future__ import annotations

import collections
import copyreg
import ctypes
import errno
import io
import mmap
import os
import pickle
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from msgspec.msgpack import Ext

from snakepit import _protocol as protocol
from snakepit._protocol import SHARE_THRESHOLD, SHARED_EXT, Shared, received_ext

CACHE_LIMIT = 1 << 30  # bytes of unused segments a sender keeps for reuse (and of idle mappings a receiver keeps)
IDLE_RELEASE = 1.0  # seconds after which a segment nothing was placed in, or a mapping nothing used, is released
_PAGE = 4096
_HEADER = 2 * _PAGE  # the delivery slots, and room for aligning the data (see _offset)
_SLOTS = _PAGE  # the first page: one byte per delivery, set until its receiver drops it (0: a copy's)
_GRAIN = 1 << 20  # segment sizes are multiples of this: one segment serves similar sizes
_MAX_FDS = 250  # per message (the kernel's SCM_MAX_FD is 253)
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(tuple[str, bytes, list[tuple[int, int, int]]]).decode
_POPULATE = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class _Cache(Protocol):
    def sweep(self, before: float) -> bool: ...


class _Sweeper:
    """One thread per process releases what senders' segments and receivers' mappings have left
    unused for :data:`IDLE_RELEASE` seconds: it wakes once a second while any holds something,
    and sleeps while none does."""

    def __init__(self) -> None:
        self._caches: weakref.WeakSet[Any] = weakref.WeakSet()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the thread is not the child's

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._wakes = 0
        self._thread: threading.Thread | None = None

    def add(self, cache: _Cache) -> None:
        with self._cond:
            self._caches.add(cache)

    def caches(self) -> list[_Cache]:
        with self._cond:
            return list(self._caches)

    def wake(self) -> None:
        """A cache holds something new."""
        with self._cond:
            self._wakes += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="snakepit-segments", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        cond, seen, occupied = self._cond, 0, False
        while True:
            with cond:
                if occupied:
                    cond.wait(IDLE_RELEASE)
                elif self._wakes == seen:
                    cond.wait()
                seen = self._wakes
            caches = self.caches()
            before = time.monotonic() - IDLE_RELEASE
            occupied = False
            for cache in caches:  # its own lock, never with ours: a cache wakes us holding its lock
                occupied |= cache.sweep(before)
            del caches


_SWEEPER = _Sweeper()


class _Segment:
    __slots__ = ("fd", "map", "capacity", "placed_at", "address", "lent", "to")

    def __init__(self, size: int) -> None:
        self.placed_at = 0.0
        self.capacity = -(-(size + _HEADER) // _GRAIN) * _GRAIN
        if self.capacity > _available():  # its pages are allocated at once: the OOM killer's to deal with
            raise MemoryError(f"cannot allocate {size} bytes of shared memory: the system has not that much left")
        self.fd = os.memfd_create("snakepit-value", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.capacity)
            self.map = _map(self.fd, self.capacity, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.lent = False  # arrays this process built on it are alive (see Segments.allocate)
        self.to: dict[int, object] = {}  # slot -> the connection it was delivered over (owner side)

    @property
    def held(self) -> bool:
        return self.lent or self.map.find(b"\x01", 0, _SLOTS) >= 0

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


Placed = tuple["Segments", _Segment, int, int]  # the segments it is from, the segment, offset, slot


class Segments:
    """A sender's segments: ``place`` copies a buffer into an unused one (made if none fits),
    ``allocate`` lends one to arrays built on it, ``lend`` delivers a buffer lying in a lent one.
    Thread-safe: the owner's callers place their arguments concurrently."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self._limit = limit
        self._all: list[_Segment] = []
        # Reentrant: a lent segment's arrays may end (a finalizer) in the middle of a placement.
        self._lock = threading.RLock()
        self._closed = False
        self.lent_bytes = 0  # in segments lent to arrays still alive
        self.report: Callable[[int], object] | None = None  # told ``lent_bytes`` when it changes
        _SWEEPER.add(self)

    def _take(self, size: int) -> tuple[_Segment, bool]:
        """The smallest unused segment that holds ``size`` bytes, or a new one (lock held); and
        whether it is new (all zeros)."""
        best = None
        for segment in self._all:
            if segment.capacity >= size + _HEADER and not segment.held and (best is None or segment.capacity < best.capacity):
                best = segment
        fresh = best is None
        if best is None:
            best = _Segment(size)
            self._all.append(best)
            self._release_unused(keep=best, limit=self._limit)
            _SWEEPER.wake()
        best.placed_at = time.monotonic()
        return best, fresh

    def place(self, buffer: memoryview) -> tuple[_Segment, int, int]:
        """Copy ``buffer`` into a segment held (slot 0) until its receiver drops the value; the
        segment, where in it the bytes start, and the slot."""
        size = buffer.nbytes
        with self._lock:
            best, _ = self._take(size)
            best.map[0] = 1
            best.to.pop(0, None)  # delivered over a connection since closed, and dropped
        offset = _offset(buffer)
        best.map[offset : offset + size] = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        return best, offset, 0

    def allocate(self, nbytes: int, zeroed: bool = False) -> memoryview:
        """``nbytes`` writable bytes in a segment lent to what is built on them: the segment is
        not reused before the last object referring to them is gone (nor before its deliveries
        have been dropped)."""
        with self._lock:
            segment, fresh = self._take(nbytes)
            segment.lent = True
            protocol.lending_dumps = _lending_dumps
            self.lent_bytes += segment.capacity
            self._report()
        holder = (ctypes.c_char * nbytes).from_buffer(segment.map, _PAGE)
        weakref.finalize(holder, self._returned, segment)
        if zeroed and not fresh:
            ctypes.memset(holder, 0, nbytes)
        return memoryview(holder).cast("B")

    def holds(self, address: int, nbytes: int) -> bool:
        """Whether ``nbytes`` at ``address`` lie in a segment lent here."""
        with self._lock:
            return self._lent_at(address, nbytes) is not None

    def _lent_at(self, address: int, nbytes: int) -> _Segment | None:
        """The lent segment ``nbytes`` at ``address`` lie in, if any (lock held)."""
        for segment in self._all:
            offset = address - segment.address
            if segment.lent and offset >= _PAGE and offset + nbytes <= segment.capacity:
                return segment
        return None

    def _returned(self, segment: _Segment) -> None:
        """The last object built on a lent segment is gone (a finalizer, on any thread)."""
        with self._lock:
            segment.lent = False
            segment.placed_at = time.monotonic()
            self.lent_bytes -= segment.capacity
            self._report()

    def _report(self) -> None:
        if self.report is not None:
            self.report(self.lent_bytes)

    def lend(self, buffer: memoryview) -> tuple[_Segment, int, int] | None:
        """``buffer`` delivered by reference, if it lies in a segment lent here: the segment,
        where in it the buffer starts, and a delivery slot taken for it. The array being sent
        becomes read-only: a value delivered never changes under its receiver."""
        if not self.lent_bytes:
            return None
        address = _address(buffer)
        if address is None:
            return None
        with self._lock:
            segment = self._lent_at(address, buffer.nbytes)
            if segment is None:
                return None
            slot = segment.map.find(b"\0", 1, _SLOTS)
            if slot < 0:  # every slot is taken: a copy it is
                return None
            segment.map[slot] = 1
            segment.to.pop(slot, None)  # delivered over a connection since closed, and dropped
        offset = address - segment.address
        flags = getattr(buffer.obj, "flags", None)  # a numpy array's: the one sent
        if flags is not None:
            flags.writeable = False
        return segment, offset, slot

    def delivered(self, segment: _Segment, slot: int, channel: object) -> None:
        """The value in ``slot`` went over ``channel``: :meth:`forget` it there if it closes."""
        with self._lock:
            segment.to[slot] = channel

    def forget(self, channel: object) -> None:
        """``channel`` is closed: its receiver will never clear the slots delivered over it."""
        with self._lock:
            for segment in self._all:
                for slot in [slot for slot, to in segment.to.items() if to is channel]:
                    del segment.to[slot]
                    segment.map[slot] = 0

    def _release_unused(self, keep: _Segment | None = None, limit: int = 0, before: float | None = None) -> None:
        """Release unused segments (lock held): those nothing was placed in since ``before``,
        and the least recently used beyond ``limit`` bytes (the most recent one stays, whatever
        its size: a burst of values too large for the limit still reuses it)."""
        unused = sorted((s for s in self._all if s is not keep and not s.held), key=_placed_at, reverse=True)
        total = 0
        for index, segment in enumerate(unused):
            total += segment.capacity
            if (index == 0 or total <= limit) and (before is None or segment.placed_at > before):
                continue
            self._all.remove(segment)
            segment.close()

    def sweep(self, before: float) -> bool:
        """Release the segments nothing was placed in since ``before``; whether any are left."""
        with self._lock:
            if not self._closed:
                self._release_unused(limit=self._limit, before=before)
            return bool(self._all)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            segments = [s for s in self._all if not s.lent]  # a lent one ends with its arrays
            self._all = [s for s in self._all if s.lent]
        for segment in segments:
            segment.close()


def _placed_at(segment: _Segment) -> float:
    return segment.placed_at


_LENDER: Segments | None = None
_LENDER_LOCK = threading.Lock()


def _forget_lender() -> None:
    """In a forked child: the segments inherited are the parent's, which it keeps using (a
    segment both reused would be two arrays on the same pages); the child lends its own."""
    global _LENDER, _LENDER_LOCK
    _LENDER, _LENDER_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_lender)


def lender() -> Segments:
    """This process's segments for :mod:`snakepit.shared` (a worker's are also those its values
    are copied into)."""
    global _LENDER
    with _LENDER_LOCK:
        if _LENDER is None:
            _LENDER = Segments()
        return _LENDER


def allocate(nbytes: int, zeroed: bool) -> memoryview:
    """``nbytes`` in shared memory that goes by reference when sent (see :mod:`snakepit.shared`)."""
    return lender().allocate(nbytes, zeroed)


def _lending_dumps(value: Any, buffer_callback: Any, pickler: type[pickle.Pickler]) -> bytes:
    """Pickle ``value`` (with ``pickler``: pickle's or cloudpickle's) in a process that lends
    segments to arrays: an array lying in one goes by reference only if it is C-contiguous.
    numpy pickles a Fortran-ordered array through a C-ordered transpose it makes for the purpose,
    which would go by reference while the array sent stayed writable; such an array is pickled
    from a copy of its own instead (the one-copy path of anything not C-contiguous)."""
    lender = _LENDER
    if lender is not None and lender.lent_bytes:
        pickler = _guarded(pickler)
    elif pickler is pickle.Pickler:  # nothing lent now: the usual way
        return pickle.dumps(value, protocol=5, buffer_callback=buffer_callback)
    return _plain_dumps(value, buffer_callback, pickler)


def _guarded(pickler: type[pickle.Pickler]) -> type[pickle.Pickler]:
    """``pickler`` with numpy arrays reduced by :func:`_reduce_array` (a class attribute: the C
    pickler reads its dispatch table when it is made)."""
    guarded = _GUARDED.get(pickler)
    if guarded is None:
        import numpy

        table = pickler.__dict__.get("dispatch_table", copyreg.dispatch_table)
        reducers = collections.ChainMap({numpy.ndarray: _reduce_array}, table)
        guarded = _GUARDED[pickler] = type(pickler.__name__, (pickler,), {"dispatch_table": reducers})
    return guarded


_GUARDED: dict[type[pickle.Pickler], type[pickle.Pickler]] = {}


def _plain_dumps(value: Any, buffer_callback: Any, pickler: type[pickle.Pickler]) -> bytes:
    out = io.BytesIO()
    pickler(out, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


def _reduce_array(array: Any) -> Any:
    flags = array.flags
    if not flags.c_contiguous and flags.f_contiguous and array.nbytes >= SHARE_THRESHOLD:
        lender = _LENDER
        if lender is not None and lender.holds(array.ctypes.data, array.nbytes):
            array = array.copy(order="F")
    return array.__reduce_ex__(5)


def _place(segments: Segments, buffer: memoryview) -> Placed:
    """``buffer`` sent: by reference if it lies in a segment lent by this process, else copied
    into one of ``segments``."""
    lent = _LENDER.lend(buffer) if _LENDER is not None else None
    if lent is not None:
        return (_LENDER, *lent)  # type: ignore[return-value]
    return (segments, *segments.place(buffer))


def _clear(placed: list[Placed]) -> None:
    """These deliveries will not go out: their slots are free again."""
    for _, segment, _, slot in placed:
        try:
            segment.map[slot] = 0
        except ValueError:  # closed
            pass


def _address(buffer: memoryview) -> int | None:
    """Where ``buffer``'s bytes are in this process's memory, if it can be told."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):  # read-only: a numpy array (sent before) says where its data is
        interface = getattr(buffer.obj, "__array_interface__", None)
        return interface["data"][0] if isinstance(interface, dict) else None


def _offset(buffer: memoryview) -> int:
    """Where to put ``buffer``'s bytes in a segment: at the same offset within a page as they
    have in the sender's memory. A copy whose destination sits a few cache lines past its source
    (mod 4 KiB) runs at a third of the speed (the processor takes the stores for loads'
    dependencies: "4K aliasing"), and arrays start at odd offsets (malloc's 16-byte header)."""
    address = _address(buffer)
    return _PAGE + (16 if address is None else address) % _PAGE  # unknown (bytes): malloc's usual alignment


class _Mapping:
    __slots__ = ("map", "users", "since")

    def __init__(self, segment: mmap.mmap) -> None:
        self.map = segment
        self.users = 0  # values built on it
        self.since = 0.0  # when the last of them was dropped


class Mappings:
    """A receiver's mappings of the segments it is sent, kept while values use them and for
    :data:`IDLE_RELEASE` seconds after (at most :data:`CACHE_LIMIT` bytes of unused ones): a
    segment sent again (its sender reuses it) is found by its identity, already mapped with its
    pages present, instead of being mapped again (which costs as much as copying it). Once
    closed (its connection is), a mapping goes as soon as its last value does."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.RLock()  # reentrant: a value may be dropped (a finalizer) anywhere
        self._entries: dict[tuple[int, int], _Mapping] = {}
        self._closed = False
        _SWEEPER.add(self)

    def view(self, fd: int, size: int, offset: int, slot: int) -> memoryview:
        """The ``size`` bytes at ``offset`` in the segment ``fd``, delivered in ``slot``: a view
        whose end clears the slot; read-only if delivered by reference (slot > 0: the sender's
        own pages, which other receivers may map too), writable if it is a copy."""
        stat = os.fstat(fd)
        if offset < _PAGE or stat.st_size < offset + size or not 0 <= slot < _SLOTS:
            raise ValueError(f"a shared segment of {stat.st_size} bytes cannot hold {size} at {offset} (slot {slot})")
        key = (stat.st_dev, stat.st_ino)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.users += 1
        if entry is None:
            mapped = _Mapping(_map(fd, stat.st_size, size))
            with self._lock:
                entry = self._entries.get(key)
                if entry is None:
                    entry = mapped
                    if not self._closed:
                        self._entries[key] = entry
                        _SWEEPER.wake()
                entry.users += 1
        holder = (ctypes.c_char * size).from_buffer(entry.map, offset)
        weakref.finalize(holder, self._dropped, key, entry, slot)
        view = memoryview(holder).cast("B")
        return view.toreadonly() if slot else view

    def _dropped(self, key: tuple[int, int], entry: _Mapping, slot: int) -> None:
        entry.map[slot] = 0  # the sender may reuse the segment once every slot is clear
        with self._lock:
            entry.users -= 1
            entry.since = time.monotonic()
            if entry.users == 0 and self._entries.get(key) is entry:
                if self._closed:
                    del self._entries[key]
                else:
                    self._trim()

    def _trim(self) -> None:
        """Keep at most ``limit`` bytes of unused mappings, the most recently used, and the most
        recent one whatever its size (lock held)."""
        unused = sorted(((e.since, k, len(e.map)) for k, e in self._entries.items() if not e.users), reverse=True)
        total = 0
        for index, (_, key, length) in enumerate(unused):
            total += length
            if index and total > self._limit:
                del self._entries[key]

    def sweep(self, before: float) -> bool:
        """Release the mappings unused since ``before``; whether any are left."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if not entry.users and entry.since < before:
                    del self._entries[key]
            return bool(self._entries)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.sweep(float("inf"))


def _available() -> int:
    """Bytes the system can still give this process without swapping out or killing anything
    (available memory and free swap), or unbounded if it does not say."""
    try:
        with open("/proc/meminfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return 1 << 63
    counted = [int(line.split()[1]) * 1024 for line in lines if line.startswith((b"MemAvailable:", b"SwapFree:"))]
    return sum(counted) if counted else 1 << 63


def _map(fd: int, length: int, size: int) -> mmap.mmap:
    """All of segment ``fd``, its pages present (faulted in one go, not one by one on use)."""
    try:
        return mmap.mmap(fd, length, flags=_POPULATE)
    except OSError as exc:
        if exc.errno == errno.ENOMEM:  # no address space left (a memory limit): what a copy would raise
            raise MemoryError(f"cannot map a shared value of {size} bytes") from None
        raise


def send_fds(sock: socket.socket, fds: list[int], wait: Callable[[], object] | None = None) -> None:
    """Pass ``fds`` over ``sock`` (blocking: a receiver that lags holds the sender back). With
    ``wait``, the socket is not waited on: ``wait()`` is called while it has no room, then it is
    looked at again (only the caller sends on it). ``MSG_DONTWAIT`` would not do: a Unix socket
    passing descriptors waits for room regardless (Linux 6.18)."""
    for start in range(0, len(fds), _MAX_FDS):
        if wait is not None:
            while not select.select((), (sock,), (), 0)[1]:
                wait()
        socket.send_fds(sock, [b"s"], fds[start : start + _MAX_FDS])


def _header(kind: str, data: bytes, buffers: list[memoryview], placed: list[Placed]) -> Ext:
    placements = [(b.nbytes, offset, slot) for b, (_, _, offset, slot) in zip(buffers, placed)]
    return Ext(SHARED_EXT, _ENCODE((kind, data, placements)))


def _fds(placed: list[Placed]) -> list[int]:
    return [segment.fd for _, segment, _, _ in placed]


class Attachments:
    """One call's large arguments, placed before a worker is chosen (the owner's side), sent with
    the call. Placed segments are held for their receiver; a call dropped unsent (refused,
    interrupted) gives them back."""

    __slots__ = ("_segments", "placed", "sent")

    def __init__(self, segments: Segments) -> None:
        self._segments = segments
        self.placed: list[Placed] = []
        self.sent = False

    @property
    def fds(self) -> list[int]:
        return _fds(self.placed)

    def share(self, kind: str, data: bytes, buffers: list[memoryview]) -> Ext:
        placed = [_place(self._segments, b) for b in buffers]
        self.placed += placed
        return _header(kind, data, buffers, placed)

    def deliver(self, channel: object) -> None:
        """Sent over ``channel``: what it delivered is its receiver's to drop (see
        :func:`forget`)."""
        self.sent = True
        for segments, segment, _, slot in self.placed:
            segments.delivered(segment, slot, channel)

    def __del__(self) -> None:
        if not self.sent:
            _clear(self.placed)


def forget(channel: object) -> None:
    """``channel`` (a connection's socket) is closed, its receiver gone or going: the slots of
    what was delivered over it are cleared, in every sender's segments of this process."""
    for segments in [s for s in list(_SWEEPER.caches()) if isinstance(s, Segments)]:
        segments.forget(channel)


def sender(sock: socket.socket, segments: Segments) -> Callable[[str, bytes, list[memoryview]], Ext]:
    """``share`` for the worker: a value's segments are sent the moment it is encoded, before its
    frame is written or queued, so that socket and pipe stay in step."""

    def share(kind: str, data: bytes, buffers: list[memoryview]) -> Ext:
        placed = [_place(segments, b) for b in buffers]
        send_fds(sock, _fds(placed))
        return _header(kind, data, buffers, placed)

    return share


def deferred_sender(segments: Segments, pending: threading.local) -> Callable[[str, bytes, list[memoryview]], Ext]:
    """``share`` for a worker running calls on several threads: a value's segments are placed
    at once, but wait in ``pending.segments`` (this thread's) until its message goes out, when
    their descriptors are sent just before its frame, under the same lock (see
    ``child.threads.SharedOutbox``): the socket and the pipe stay in step across threads. A
    message that never goes out gives its segments back with :func:`release_pending`."""

    def share(kind: str, data: bytes, buffers: list[memoryview]) -> Ext:
        placed = [_place(segments, b) for b in buffers]
        waiting = getattr(pending, "segments", None)
        if waiting is None:
            waiting = pending.segments = []
        waiting.extend(placed)
        return _header(kind, data, buffers, placed)

    return share


def take_pending(pending: threading.local) -> list[int]:
    """The descriptors this thread's next message goes with (see :func:`deferred_sender`)."""
    waiting = getattr(pending, "segments", None)
    if not waiting:
        return []
    pending.segments = None
    return _fds(waiting)


def release_pending(pending: threading.local) -> None:
    """This thread's message will not go out: its placed segments are free again."""
    waiting = getattr(pending, "segments", None)
    pending.segments = None
    _clear(waiting or [])


def receiver(sock: socket.socket, mappings: Mappings) -> Callable[[int, memoryview], Any]:
    """The ``ext_hook`` of a frame reader on this socket's side: a shared value's segments are
    taken off the socket and mapped (by ``mappings``) as its frame is decoded; other extensions
    pass unchanged."""
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
            views = [mappings.view(fd, size, offset, slot) for fd, (size, offset, slot) in zip(fds, placements)]
            return Shared(kind, pickle_data, views)
        finally:
            for fd in fds:
                os.close(fd)

    return hook

"""The owner's side of a worker process that runs several calls at once (``threads_per_worker``).

Its calls share one responses pipe, so no caller can read it for itself: a reader thread
(:class:`Mux`) takes everything the process says as soon as it says it, and sorts it by call into
the inbox of the call slot that sent the call. Each slot is a :class:`SlotConnection`, what a
caller uses as the connection to "its" worker: the generic pool sees ``threads`` workers in the
process's group, each serving one call at a time, as it sees a one-thread process.

Reading the pipe at once, whatever the callers do, is what keeps one slow stream consumer from
stalling the process's other calls; the stream itself is held back by credit: its thread in the
worker stops after ``STREAM_WINDOW`` frames this side has not taken (see ``child.threads``), and
:meth:`SlotConnection.take` grants more as its consumer takes them. So an inbox holds at most a
window of frames (a batch of small chunks is one frame of at most ``BATCH_BYTES``). What a
process had queued in its crash-safe queue when it died is sorted after everything it wrote.
"""

from __future__ import annotations

import os
import select
import threading
import weakref
from collections import deque
from typing import Any

from snakepit._backends.process.connection import ProcessConnection
from snakepit._protocol import HEADER, STREAM_WINDOW, TERMINAL, Chunk, Chunks, Credit
from snakepit._seam.backend import FedByThread, WorkerGone

_GRANT_EVERY = STREAM_WINDOW // 2


class Mux:
    """Reads one process's responses on a thread of its own, into its slots' inboxes."""

    def __init__(self, conn: ProcessConnection, count: int) -> None:
        self.conn = conn
        self.slots = [SlotConnection(self, index) for index in range(count)]
        self.lock = threading.Lock()
        self._route: dict[int, SlotConnection] = {}  # call id -> the slot it was sent from
        self.gone = False  # the process has ended and everything it said is sorted
        self._thread = threading.Thread(target=self._read, name=f"snakepit-mux-{conn.worker_id}", daemon=True)
        self._thread.start()

    def expect(self, call_id: int, slot: SlotConnection) -> None:
        with self.lock:
            self._route[call_id] = slot

    def _read(self) -> None:
        conn = self.conn
        poller = select.poll()
        poller.register(conn.responses_fd, select.POLLIN)
        if conn.pidfd is not None:
            poller.register(conn.pidfd, select.POLLIN)
        exited = False
        try:
            while True:
                ready = poller.poll()
                exited = exited or any(fd != conn.responses_fd for fd, _ in ready)
                messages = conn.reader.read(conn.responses_fd)
                if messages is None or (exited and not messages):
                    self._sort(conn.salvage())  # what it had queued when it died (see child.outbox)
                    return
                if messages:
                    self._sort(messages)
        except Exception:  # bytes lost (conn.broken says so): nothing more can be sorted
            return
        finally:
            with self.lock:
                self.gone = True
            for slot in self.slots:
                slot.wake()

    def _sort(self, messages: list[Any]) -> None:
        touched: set[SlotConnection] = set()
        with self.lock:
            route = self._route
            for message in messages:
                slot = route.get(message.id)
                if slot is None:
                    continue  # after its call ended: nobody is waiting for it
                slot.inbox.append(message)
                touched.add(slot)
                if type(message) in TERMINAL:
                    del route[message.id]
        for slot in touched:
            slot.wake()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader to end (it does once the process has): before its pipes close."""
        self._thread.join(timeout)


class SlotConnection(FedByThread):
    """One call slot of a process: the ``Connection`` a caller, a map or a drain uses (see
    :class:`snakepit._seam.backend.Connection`); everything that concerns the process itself
    (its end, its memory) is the process's."""

    def __init__(self, mux: Mux, index: int) -> None:
        self._mux = mux
        self.index = index
        self.closing = mux.conn.closing
        self.inbox: deque[Any] = deque()
        self._ready_lock = threading.Lock()  # close() against a wake or a take on the eventfd
        self._ready = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._close_ready = weakref.finalize(self, os.close, self._ready)  # at close(), or with the last user
        self._taken: dict[int, int] = {}  # stream id -> frames taken since its last credit

    def __repr__(self) -> str:
        return f"<call slot {self.index} of {self._mux.conn!r}>"

    # -- the process's ---------------------------------------------------------------------------

    @property
    def process(self) -> ProcessConnection:
        return self._mux.conn

    @property
    def pid(self) -> int:
        return self._mux.conn.pid

    @property
    def node(self) -> str | None:
        return None

    @property
    def node_id(self) -> str | None:
        return None

    @property
    def exit_info(self) -> dict[str, Any] | None:
        return self._mux.conn.exit_info

    @property
    def broken(self) -> bool:
        return self._mux.conn.broken

    def memory(self) -> int | None:
        return self._mux.conn.memory()

    def exit_status(self) -> dict[str, Any]:
        return self._mux.conn.exit_status()

    def salvage(self) -> list[Any]:
        return []  # the threads write every message whole, at once: the reader sorted them all

    def kill(self) -> None:
        self._mux.conn.kill()

    def signal(self, signum: int) -> None:
        """Signal the process (a slot's call that will not stop ends them all)."""
        self._mux.conn.signal(signum)

    def close(self) -> None:
        """The process is gone and disposed of: its slot's eventfd is closed now, not whenever
        the last reference to the slot goes (a timer may hold its worker for a minute)."""
        with self._ready_lock:
            self._ready = -1  # wake() and take() see a closed slot, never a reused fd number
            self._close_ready()

    def wake(self) -> None:
        """Something came for this slot (or the process has ended): wake its waiters."""
        with self._ready_lock:
            if self._ready >= 0:
                os.eventfd_write(self._ready, 1)

    def send_control(self, message: Any) -> bool:
        return self._mux.conn.send_control(message)

    # -- sending ---------------------------------------------------------------------------------

    def fits(self, size: int) -> bool:
        return self._mux.conn.fits(size)

    def send(self, frame: bytes | bytearray, deadline: float | None = None, attachments: Any = None) -> None:
        if self._mux.gone:
            raise WorkerGone()
        self._mux.expect(_call_id(frame), self)
        self._mux.conn.send(frame, deadline, attachments)

    # -- receiving -------------------------------------------------------------------------------

    @property
    def ready_fd(self) -> int:
        return self._ready

    def spin(self) -> bool:
        return False  # the reader thread wakes us

    def take(self, exited: bool = False) -> list[Any]:
        with self._ready_lock:
            try:
                if self._ready >= 0:
                    os.eventfd_read(self._ready)
            except OSError:  # nothing to read
                pass
        with self._mux.lock:
            messages = list(self.inbox)
            self.inbox.clear()
            gone = self._mux.gone
        if messages:
            self._credit(messages)
            return messages
        if gone:
            raise WorkerGone()
        return messages

    def _credit(self, messages: list[Any]) -> None:
        """Grant the worker as many more frames of each stream as its consumer took here."""
        taken = self._taken
        for message in messages:
            kind = type(message)
            if kind is Chunk or kind is Chunks:
                count = taken.get(message.id, 0) + 1
                if count >= _GRANT_EVERY:
                    self._mux.conn.send_control(Credit(message.id, count))
                    count = 0
                taken[message.id] = count
            elif kind in TERMINAL:
                taken.pop(message.id, None)


def _call_id(frame: bytes | bytearray) -> int:
    """The id of an encoded ``Call`` or ``Batch``: the array's second item, after the tag."""
    at = HEADER.size + 2  # the frame header, the fixarray header, the (fixint) tag
    marker = frame[at]
    if marker < 0x80:
        return marker
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[marker]
    return int.from_bytes(frame[at + 1 : at + 1 + width], "big")

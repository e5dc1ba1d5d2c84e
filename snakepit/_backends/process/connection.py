"""The owner's connection to one worker process: its pipes, its pidfd, the process.

A connection is used by one party at a time: the supervisor while the worker starts, idles or drains
a cancelled call; the calling thread (or event loop) while the worker is checked out. Writes to the
requests and control pipes may come from two parties at once (a call and a shutdown), so each has
a lock. Reads of the responses pipe take a lock too, which only :meth:`close_fds` contends for:
when the pool closes, a worker a caller still holds (a stream kept unread) has its descriptors
closed all the same, and no read, write or signal may then reach a number the process has given
to another file since.

Death is seen two ways, both without polling: end-of-file on the responses pipe and the process's
pidfd becoming readable (the latter also when a grandchild inherited the pipe).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import select
import signal
import socket
import subprocess
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import psutil

from snakepit._backends.process import segments, spill
from snakepit._backends.process.segments import Attachments
from snakepit._backends.process.spin import Spin
from snakepit._backends.process.template import ForkedProcess
from snakepit._protocol import Event, FrameReader, FrameWriter, FromWorker, write_all
from snakepit._seam.backend import Closing, DeadlineExceeded, PoolClosing, WorkerGone, death_cause, watch_readers
from snakepit._seam.timing import deadline_after, poll_ms


@dataclass(frozen=True)
class WorkerPipes:
    """The owner's ends of a worker's pipes (see :func:`~snakepit._backends.process.launcher.spawn`)."""

    requests: int
    control: int
    responses: int
    events: int
    stdout: int
    stderr: int
    spill: int
    segments: int  # a Unix socket: large values' memfds, both ways (see .segments)


_EVENTS_READ_SIZE = 64 << 10  # heartbeat answers, log records, telemetry: small, and dropped when late


def _write_until(fd: int, data: bytes | bytearray, deadline: float, closing: Closing) -> None:
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.register(closing.fd, select.POLLIN)
    os.set_blocking(fd, False)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                if closing.is_set:
                    raise PoolClosing() from None
                wait_ms = poll_ms(deadline)
                if wait_ms == 0:
                    raise DeadlineExceeded() from None
                poller.poll(wait_ms)
    finally:
        os.set_blocking(fd, True)


def _pipe_capacity(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (OSError, AttributeError):  # not Linux: assume the smallest common default (macOS)
        return 16 << 10


class ProcessConnection:
    """The owner's side of one worker process: its pipes, its pidfd, the process itself."""

    def __init__(
        self, worker_id: int, process: subprocess.Popen[bytes] | ForkedProcess, pipes: WorkerPipes, closing: Closing
    ) -> None:
        self.worker_id = worker_id
        self.closing = closing
        self.process = process
        self.pid = process.pid
        self.node: str | None = None  # this machine
        self.node_id: str | None = None
        self.pipes = pipes
        self.requests_fd = pipes.requests
        self.requests_room = _pipe_capacity(pipes.requests)  # what a write takes without a reader
        self.control_fd = pipes.control
        self.responses_fd = pipes.responses
        self.spill_fd = pipes.spill
        # A forked worker comes with a pidfd its template opened before anything could reap it.
        self.pidfd = process.pidfd if isinstance(process, ForkedProcess) else _pidfd_open(process.pid)
        self._socket = socket.socket(fileno=os.dup(pipes.segments))  # closed with the connection
        self._mappings = segments.Mappings()  # of the worker's segments: released with the connection
        self.reader = FrameReader(FromWorker, ext_hook=segments.receiver(self._socket, self._mappings))
        self.events = FrameReader(Event, read_size=_EVENTS_READ_SIZE)
        self.output: dict[int, bytes] = {pipes.stdout: b"", pipes.stderr: b""}  # partial lines
        self.exit_info: dict[str, Any] | None = None  # once reaped: its exit code or signal
        self.watched: set[int] = set()  # fds the supervisor's selector watches
        self.on_group_ended: Callable[[int], None] | None = None  # told before it is reaped
        self.killed_by_oom: Callable[[], bool] = lambda: False  # asked when SIGKILL ended it
        self._request_lock = threading.Lock()
        self._control_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reap_lock = threading.Lock()
        self._control_writer = FrameWriter()
        self._spin = Spin()
        self._poller = select.poll()
        self._poller.register(self.responses_fd, select.POLLIN)
        if self.pidfd is not None:
            self._poller.register(self.pidfd, select.POLLIN)
        self._poller.register(closing.fd, select.POLLIN)
        # The pipes are closed by close_fds(), or when the connection is collected (a stream
        # dropped after its pool was closed is the last to hold its worker).
        self._release_fds = weakref.finalize(
            self, _close_all, (*dataclasses.astuple(pipes), self.pidfd), self._socket, self._mappings
        )
        self._release_fds.atexit = False  # at exit the pool's own shutdown still reads them

    def __repr__(self) -> str:
        return f"<worker process {self.worker_id} pid={self.pid}>"

    def memory(self) -> int | None:
        """The process's own memory, in bytes (None once it is gone): its resident memory but
        shared pages (mapped values, the spill segment, the interpreter's files), and the shared
        segments its own arrays hold (see :mod:`snakepit.shared`), which it reports."""
        try:
            info = psutil.Process(self.pid).memory_info()
        except psutil.Error:
            return None
        with self._read_lock:  # the spill descriptor is not closed (and its number reused) meanwhile
            lent = 0 if self._closed else spill.lent(self.spill_fd)
        return info.rss - getattr(info, "shared", 0) + lent

    @property
    def ready_fd(self) -> int:
        """The responses pipe: readable when there is something to take, or at end of file."""
        return self.responses_fd

    @property
    def broken(self) -> bool:
        """Bytes of the responses pipe may have been lost: what it says next cannot be trusted."""
        return self.reader.broken

    # -- writing -------------------------------------------------------------------------------

    def fits(self, size: int) -> bool:
        """A frame of ``size`` bytes goes into the empty requests pipe without waiting for a read."""
        return size <= self.requests_room

    def send(self, frame: bytes | bytearray, deadline: float | None = None, attachments: Attachments | None = None) -> None:
        """Write a frame to the requests pipe; ``WorkerGone`` if the worker has exited.

        A frame the pipe cannot hold is written while the worker reads it; a worker that reads
        nothing (stopped, hung) makes that wait end at ``deadline`` with ``DeadlineExceeded``,
        part of the frame in the pipe: the worker cannot take another call. ``attachments``
        (large arguments' shared memory) go first, over the socket.
        """
        with self._request_lock:
            if self._closed:
                raise WorkerGone()
            try:
                if attachments is not None:
                    segments.send_fds(self._socket, attachments.fds)
                    attachments.deliver(self._socket)
                if deadline is None or len(frame) <= self.requests_room:
                    written = os.write(self.requests_fd, frame)  # whole, unless interrupted
                    if written < len(frame):
                        write_all(self.requests_fd, memoryview(frame)[written:])
                else:
                    _write_until(self.requests_fd, frame, deadline, self.closing)
            except OSError as exc:
                raise WorkerGone() from exc

    def send_control(self, message: Any) -> bool:
        """Write to the control pipe; False if the worker has already gone."""
        with self._control_lock:
            if self._closed:
                return False
            try:
                write_all(self.control_fd, self._control_writer.frame(message))
            except OSError:
                return False
        return True

    # -- reading -------------------------------------------------------------------------------

    def spin(self) -> bool:
        """True when the responses pipe became readable (an exit, or the pool closing, is left
        to the watch)."""
        return any(fd == self.responses_fd for fd, _ in self._spin.poll(self._poller.poll))

    def take(self, exited: bool = False) -> list[Any]:
        """Messages available now (maybe none). ``WorkerGone`` at end of file, or once the
        process has ``exited`` and nothing more is readable (a grandchild may hold the pipe)."""
        messages = self._read()
        if messages:
            return messages
        if messages is None or exited:
            raise WorkerGone()
        return messages

    def _read(self) -> list[Any] | None:
        """What the responses pipe has (``None`` at its end, or once its descriptors are closed)."""
        with self._read_lock:
            if self._closed:
                return None
            return self.reader.read(self.responses_fd)

    def watch(self, loop: asyncio.AbstractEventLoop, callback: Callable[[bool], None]) -> Callable[[], None]:
        """``callback(exited)`` on ``loop`` when the responses pipe is readable (False) or the
        process has exited (True: its pidfd is readable)."""
        fds = [(self.responses_fd, False)] + ([(self.pidfd, True)] if self.pidfd is not None else [])
        return watch_readers(self, loop, fds, callback)

    @classmethod
    def wait_any(cls, conns: Sequence[ProcessConnection], deadline: float | None) -> list[tuple[ProcessConnection, bool]]:
        """Wait with ``poll`` on the responses pipes and pidfds of ``conns``."""
        if conns and conns[0].closing.is_set:  # one for the whole pool
            return []
        poller = select.poll()
        by_fd: dict[int, tuple[ProcessConnection, bool]] = {}
        for conn in conns:
            for fd, exited in ((conn.responses_fd, False), (conn.pidfd, True)):
                if fd is not None:
                    poller.register(fd, select.POLLIN)
                    by_fd[fd] = (conn, exited)
        if conns:
            poller.register(conns[0].closing.fd, select.POLLIN)
        ready: dict[int, tuple[ProcessConnection, bool]] = {}
        for fd, _ in poller.poll(poll_ms(deadline)):
            if fd not in by_fd:
                continue  # the pool is closing: the caller sees it
            conn, exited = by_fd[fd]
            if exited or id(conn) not in ready:
                ready[id(conn)] = (conn, exited)
        return list(ready.values())

    def receive(self, deadline: float | None) -> list[Any]:
        """Block until at least one message arrives.

        Raises ``WorkerGone`` at end of file or process exit (after delivering what was already
        sent), ``DeadlineExceeded`` when ``deadline`` (monotonic) passes first, and
        ``PoolClosing`` once the pool begins closing with nothing arrived. A reply that is not
        there yet is first waited for awake, briefly (see :mod:`.spin`).
        """
        if self.closing.is_set:  # first: a closed pool's workers' descriptors may be closed too
            raise PoolClosing()
        poll = self._poller.poll
        ready = poll(0) or self._spin.poll(poll)
        exited = False
        while True:
            if ready:
                if self.pidfd is not None and any(fd == self.pidfd for fd, _ in ready):
                    exited = True  # the pidfd is readable: the process has ended
                messages = self._read()
                if messages:
                    return messages
                if messages is None or exited:
                    raise WorkerGone()
            if self.closing.is_set:
                raise PoolClosing()
            wait_ms = poll_ms(deadline)
            if wait_ms == 0:
                raise DeadlineExceeded()
            ready = poll(wait_ms)

    # -- process -------------------------------------------------------------------------------

    # A worker leads its own process group and is a child subreaper (see worker_process), so what
    # a tool started stays findable: as the worker's descendants while it lives, and as members
    # of its group once it is gone.

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker and to every process below it (not once it has been
        reaped: its pid, and its pidfd's number, may name another process by then)."""
        if self.exit_info is not None or self._closed:
            return
        descendants = self._descendants()
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except (ProcessLookupError, OSError):
            pass
        for process in descendants:
            try:
                process.send_signal(signum)  # psutil checks the pid still names that process
            except psutil.Error:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def reap(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the process to end; its exit code or the signal that ended it.

        Before the worker is reaped (while its pid, and so its group id, cannot be reused), what
        is left of its process group is killed: processes a tool started and left behind.
        """
        with self._reap_lock:
            if self.exit_info is None:
                if not self.wait_exit(timeout):
                    raise subprocess.TimeoutExpired(self.process.args, timeout or 0.0)
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:  # nothing left in the group
                    pass
                if self.on_group_ended is not None:
                    self.on_group_ended(self.pid)
                code = self.process.wait()
                if code < 0:
                    try:
                        name = signal.Signals(-code).name
                    except ValueError:
                        name = f"signal {-code}"
                    oom = code == -signal.SIGKILL and self.killed_by_oom()
                    self.exit_info = {"exit_code": code, "signal": name, "cause": death_cause(code, name, oom)}
                else:
                    self.exit_info = {"exit_code": code, "cause": death_cause(code, None)}
                with self._read_lock:
                    stack = None if self._closed else spill.fault_log(self.spill_fd)
                if stack is not None:  # a fatal signal: the Python stacks of its threads
                    self.exit_info["python_stack"] = stack
            return self.exit_info

    def wait_exit(self, timeout: float | None = None) -> bool:
        """Wait until the process has ended, without reaping it; False at the timeout."""
        if self.has_exited():
            return True
        if self.pidfd is None or self._closed:
            try:
                self.process.wait(timeout)  # reaps: no group clean-up without pidfds
            except subprocess.TimeoutExpired:
                return False
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        poller.poll(poll_ms(deadline_after(timeout)))
        return self.has_exited()

    def salvage(self) -> list[Any]:
        """Messages a dead worker had queued but not yet written (see :mod:`.spill`)."""
        with self._read_lock:
            if self._closed:
                return []
            tail = spill.salvage(self.spill_fd, self.reader.received)
        try:
            return self.reader.feed(tail) if tail else []
        except msgspec.DecodeError:  # torn by the death: keep what arrived through the pipe
            return []

    def exit_status(self) -> dict[str, Any]:
        """Reap a worker seen dying (end of file, or pidfd): one that closed its pipe but did
        not exit within two seconds is killed first."""
        try:
            return self.reap(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.reap()

    def has_exited(self) -> bool:
        """The process has ended (it may not be reaped yet: see :meth:`reap`)."""
        if self.process.returncode is not None:
            return True
        if isinstance(self.process, ForkedProcess):  # not our child: waitid cannot see it
            return self.process.exited()
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped elsewhere
            return True

    def close_fds(self) -> None:
        """Release the pipes: once nobody waits on them (a caller still holding the worker finds
        it closed, never a number reused since: see the module's docstring)."""
        with self._read_lock, self._request_lock, self._control_lock:
            self._release_fds()

    @property
    def _closed(self) -> bool:
        return not self._release_fds.alive


def _close_all(fds: tuple[int | None, ...], sock: socket.socket, mappings: segments.Mappings) -> None:
    segments.forget(sock)  # the worker is gone: what it was sent and never dropped is free
    mappings.close()
    sock.close()
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _pidfd_open(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError:  # kernel before 5.3, or the process is already gone
        return None

"""Supervision: one thread that starts, watches, drains and replaces workers.

The thread waits in a selector on everything that can happen to a worker it owns, so it reacts
at once and never polls with sleeps:

* a process's pidfd becomes readable when the process exits, whatever killed it;
* the responses pipe of a *starting* worker delivers ``Ready`` or ``StartFailed``;
* the responses pipe of a *draining* worker (its caller cancelled or timed out) delivers the
  call's last message, after which the worker is clean and goes back to the pool;
* timers: start-up deadlines, cancel grace periods, restart back-off.

Other threads hand it work with :meth:`Supervisor.submit`; a self-pipe wakes the selector. Work
runs under one lock, also when it runs inline after the thread has stopped (during ``close``), so
a worker's bookkeeping is never touched by two threads at once.

Workers are spawned from this long-lived thread: on Linux ``PR_SET_PDEATHSIG`` fires when the
*thread* that forked the child exits, so spawning from a short-lived caller thread would kill them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any, Callable

from .. import errors
from ..adapter import ToolSpec
from ..errors import Reason
from ..protocol import TERMINAL, Cancel, Ready, Shutdown, StartFailed, encode_frame
from .launcher import LaunchSpec, spawn
from .queue import Counters, Dispatcher
from .worker import WorkerHandle, WorkerState

log = logging.getLogger("snakepit")

_EXIT, _START, _DRAIN, _WAKE = "exit", "start", "drain", "wake"

# Restart back-off: a worker that dies young (or fails to start) delays the next replacement.
_YOUNG = 5.0
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 5.0


class Supervisor:
    def __init__(
        self,
        dispatcher: Dispatcher,
        launch: LaunchSpec,
        counters: Counters,
        *,
        size: int,
        start_timeout: float,
        cancel_grace: float,
        kill_grace: float,
    ) -> None:
        self._dispatcher = dispatcher
        self._launch = launch
        self._counters = counters
        self._size = size
        self._start_timeout = start_timeout
        self._cancel_grace = cancel_grace
        self._kill_grace = kill_grace

        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))

        self._queue_lock = threading.Lock()
        self._commands: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._running = False
        self._work_lock = threading.RLock()
        self._thread = threading.Thread(target=self._run, name="snakepit-supervisor", daemon=True)

        self._timers: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._timer_seq = itertools.count()
        self._ids = itertools.count(1)
        self.handles: dict[int, WorkerHandle] = {}  # every process not yet disposed of
        self._draining: dict[int, int] = {}  # worker id -> call id being cancelled
        self._stopping = False
        self._young_deaths = 0

        self.tools: list[ToolSpec] | None = None
        self._start_cond = threading.Condition()
        self._initial = True  # start-up failures fail start(); later ones are retried with back-off
        self._ready = 0
        self._start_error: errors.SnakepitError | None = None

    # -- public ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and ``size`` workers; return when all are ready, or raise."""
        with self._queue_lock:
            self._running = True
        self._thread.start()
        for _ in range(self._size):
            self.submit(self._spawn)
        deadline = time.monotonic() + self._start_timeout
        with self._start_cond:
            while self._ready < self._size and self._start_error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.WorkerError(
                        errors.Category.WORKER,
                        Reason.WORKER_START_FAILED,
                        f"workers did not become ready within start_timeout={self._start_timeout}s "
                        f"({self._ready} of {self._size} ready)",
                    )
                self._start_cond.wait(remaining)
            if self._start_error is not None:
                raise self._start_error
            self._initial = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the supervisor thread, or right here once it has stopped."""
        with self._queue_lock:
            if self._running:
                was_empty = not self._commands
                self._commands.append((fn, args))
                if was_empty:
                    try:
                        os.write(self._wake_w, b"\0")
                    except BlockingIOError:
                        pass
                return
        with self._work_lock:
            fn(*args)

    def shutdown(self, timeout: float) -> None:
        """Stop every worker: gracefully (cleanup runs) within ``timeout``, then by force.

        The supervisor thread sees the shutdown through: it spawned the workers, and on Linux
        they are killed (``PR_SET_PDEATHSIG``) the moment it exits, cleanup or not.
        """
        self.submit(self._begin_shutdown, timeout)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        with self._work_lock:
            leftovers = [h for h in self.handles.values() if h.exit_info is None]
        # Only when the thread never ran (start failed early) or could not watch a process.
        deadline = time.monotonic() + timeout
        for handle in leftovers:
            _wait(handle, deadline - time.monotonic())
        for handle in leftovers:
            if not handle.has_exited():
                handle.signal(signal.SIGTERM)
        deadline = time.monotonic() + self._kill_grace
        for handle in leftovers:
            if not _wait(handle, deadline - time.monotonic()):
                handle.kill()
        for handle in list(self.handles.values()):
            handle.reap()
            self.submit(self._retire_after_shutdown, handle)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._selector.close()

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            events = self._selector.select(timeout)
            with self._work_lock:
                for key, _ in events:
                    kind, handle = key.data
                    if kind is _WAKE:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    elif kind is _EXIT:
                        self._exited(handle)
                    elif kind is _START:
                        self._read_start(handle)
                    elif kind is _DRAIN:
                        self._read_drain(handle)
                self._run_commands()
                self._run_timers()
                if self._stopping and all(h.exit_info is not None for h in self.handles.values()):
                    break
        with self._queue_lock:
            self._running = False
            leftover = list(self._commands)
            self._commands.clear()
        with self._work_lock:
            for fn, args in leftover:
                fn(*args)

    def _run_commands(self) -> None:
        while True:
            with self._queue_lock:
                if not self._commands:
                    return
                fn, args = self._commands.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("snakepit supervisor: %s failed", getattr(fn, "__name__", fn))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(self._timers)
            try:
                fn(*args)
            except Exception:
                log.exception("snakepit supervisor timer failed")

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the supervisor thread after ``delay`` seconds (any thread)."""
        self.submit(self._later, delay, fn, *args)

    def _later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn, args))

    # -- starting --------------------------------------------------------------------------------

    def _spawn(self) -> None:
        if self._stopping:
            return
        worker_id = next(self._ids)
        try:
            handle = spawn(worker_id, self._launch)
        except OSError as exc:
            self._start_failed(None, f"could not start a worker process: {exc}", None)
            return
        self.handles[worker_id] = handle
        self._watch(handle, handle.responses_fd, _START)
        if handle.pidfd is not None:
            self._watch(handle, handle.pidfd, _EXIT)
        else:
            threading.Thread(target=self._wait_exit, args=(handle,), daemon=True).start()
        self._later(self._start_timeout, self._start_expired, handle)
        log.debug("snakepit: started worker %d (pid %d)", worker_id, handle.pid)

    def _wait_exit(self, handle: WorkerHandle) -> None:
        """Without pidfds, a thread blocked in waitpid is the process sentinel."""
        handle.process.wait()
        self.submit(self._exited, handle)

    def _read_start(self, handle: WorkerHandle) -> None:
        messages = handle.reader.read(handle.responses_fd)
        if messages is None:
            self._unwatch(handle, handle.responses_fd)  # the exit watch reports the death
            return
        for message in messages:
            if type(message) is Ready:
                self._unwatch(handle, handle.responses_fd)
                if self.tools is None:
                    self.tools = list(message.tools)
                self._dispatcher.add_worker(handle)
                with self._start_cond:
                    self._ready += 1
                    self._start_cond.notify_all()
                return
            if type(message) is StartFailed:
                handle.start_error = (message.message, message.traceback)

    def _start_expired(self, handle: WorkerHandle) -> None:
        if handle.state is WorkerState.STARTING:
            handle.start_error = (f"not ready within start_timeout={self._start_timeout}s", None)
            handle.kill()

    def _start_failed(self, handle: WorkerHandle | None, message: str, traceback: str | None) -> None:
        details: dict[str, Any] = {"worker_id": None if handle is None else handle.id}
        if handle is not None and handle.exit_info:
            details.update(handle.exit_info)
        error = errors.WorkerError(
            errors.Category.WORKER, Reason.WORKER_START_FAILED, f"worker failed to start: {message}", details, traceback
        )
        with self._start_cond:
            if self._initial:
                if self._start_error is None:
                    self._start_error = error
                    self._start_cond.notify_all()
                return
        log.error("snakepit: %s", error.message)
        self._schedule_replacement(young=True)

    # -- draining --------------------------------------------------------------------------------

    def drain(self, handle: WorkerHandle, call_id: int) -> None:
        """Wait (off the caller's thread) for a cancelled call to end; kill the worker if it won't."""
        if handle.state is not WorkerState.DRAINING:
            return
        self._draining[handle.id] = call_id
        self._watch(handle, handle.responses_fd, _DRAIN)
        self._later(self._cancel_grace, self._drain_expired, handle, call_id)
        self._read_drain(handle)

    def _read_drain(self, handle: WorkerHandle) -> None:
        call_id = self._draining.get(handle.id)
        if call_id is None:
            return
        while True:
            messages = handle.reader.read(handle.responses_fd)
            if not messages:
                if messages is None:
                    self._unwatch(handle, handle.responses_fd)
                    self._draining.pop(handle.id, None)
                return
            for message in messages:
                if isinstance(message, TERMINAL) and message.id == call_id:
                    self._unwatch(handle, handle.responses_fd)
                    del self._draining[handle.id]
                    self._dispatcher.drained(handle)
                    return

    def _drain_expired(self, handle: WorkerHandle, call_id: int) -> None:
        if self._draining.get(handle.id) == call_id and handle.state is WorkerState.DRAINING:
            log.warning(
                "snakepit: worker %d did not give up call %d within %.1fs; killing it",
                handle.id, call_id, self._cancel_grace,
            )
            self.terminate(handle)

    def terminate(self, handle: WorkerHandle) -> None:
        """SIGTERM now, SIGKILL after ``kill_grace`` if it is still there."""
        handle.signal(signal.SIGTERM)
        self._later(self._kill_grace, self._kill_if_alive, handle)

    def _kill_if_alive(self, handle: WorkerHandle) -> None:
        if handle.exit_info is None:
            handle.kill()

    # -- deaths ----------------------------------------------------------------------------------

    def _exited(self, handle: WorkerHandle) -> None:
        was_starting = handle.state is WorkerState.STARTING
        if self._dispatcher.worker_died(handle):
            self._on_death(handle, was_starting)

    def lost(self, handle: WorkerHandle) -> None:
        """A caller saw its worker die (it has already taken it out of service)."""
        self._on_death(handle, False)

    def _on_death(self, handle: WorkerHandle, was_starting: bool) -> None:
        if not handle.has_exited():  # end of file without exit: make sure it is gone
            handle.kill()
        info = handle.reap()
        self._draining.pop(handle.id, None)
        if handle.pidfd is not None:
            self._unwatch(handle, handle.pidfd)
        self._unwatch(handle, handle.responses_fd)
        if not handle.checked_out:
            self.dispose(handle)
        if self._stopping:
            return
        young = time.monotonic() - handle.started_monotonic < _YOUNG
        if was_starting:
            message, traceback = handle.start_error or (f"exited during start-up ({_describe_exit(info)})", None)
            self._start_failed(handle, message, traceback)
            return
        log.warning("snakepit: worker %d (pid %d) exited: %s", handle.id, handle.pid, _describe_exit(info))
        self._schedule_replacement(young)

    def _retire_after_shutdown(self, handle: WorkerHandle) -> None:
        self._dispatcher.worker_died(handle)
        if not handle.checked_out:
            self.dispose(handle)

    def _schedule_replacement(self, young: bool) -> None:
        if self._stopping:
            return
        self._young_deaths = self._young_deaths + 1 if young else 0
        delay = 0.0 if self._young_deaths <= 1 else min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (self._young_deaths - 1))
        self._counters.bump("restarts")
        self._later(delay, self._spawn)

    def dispose(self, handle: WorkerHandle) -> None:
        """Forget a dead worker whose pipes nobody uses any more."""
        if self.handles.pop(handle.id, None) is None:
            return
        for fd in list(handle.watched):
            self._unwatch(handle, fd)
        handle.close_fds()

    # -- shutdown --------------------------------------------------------------------------------

    def _begin_shutdown(self, timeout: float) -> None:
        self._stopping = True
        self._timers.clear()
        self._later(timeout, self._force_shutdown)
        for handle in list(self.handles.values()):
            if handle.state is WorkerState.DEAD:
                continue
            call = handle.current_call if handle.current_call is not None else self._draining.get(handle.id)
            if call is not None:
                handle.send_control(Cancel(call))
            try:
                handle.send(encode_frame(Shutdown()))
            except Exception:  # already gone: nothing to shut down
                pass

    def _force_shutdown(self) -> None:
        """Past the graceful deadline: SIGTERM, then SIGKILL after ``kill_grace``."""
        for handle in self.handles.values():
            if handle.exit_info is None:
                self.terminate(handle)

    # -- selector bookkeeping --------------------------------------------------------------------

    def _watch(self, handle: WorkerHandle, fd: int, kind: str) -> None:
        watched = handle.watched
        if fd in watched:
            self._selector.modify(fd, selectors.EVENT_READ, (kind, handle))
        else:
            self._selector.register(fd, selectors.EVENT_READ, (kind, handle))
        watched[fd] = kind

    def _unwatch(self, handle: WorkerHandle, fd: int | None) -> None:
        watched = handle.watched
        if fd is None or fd not in watched:
            return
        del watched[fd]
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass


def _wait(handle: WorkerHandle, timeout: float) -> bool:
    try:
        handle.process.wait(max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


def _describe_exit(info: dict[str, Any]) -> str:
    return info.get("signal") or f"exit code {info.get('exit_code')}"

"""Supervision: one thread that starts, watches, drains, recycles and replaces workers.

The supervisor is a :class:`~snakepit._seam.reactor.Reactor`: everything that can happen to a
worker reaches it as an event on its thread (the backend's :class:`WorkerEvents`: ready,
exited, a heartbeat answered), as a worker's connection becoming readable while a cancelled call
drains, or as one of its timers: start-up
deadlines, cancel grace periods, restart back-off, and a periodic health round that pings idle
workers (a worker that stops answering is killed and replaced) and recycles idle ones past
``worker_ttl`` or ``memory_limit_mb``. It holds the policy; the backend
(:mod:`snakepit._backends`) the mechanisms. The thread lives until every worker has exited at
shutdown (a process backend's workers die with the thread that started them).

Replacement policy: a worker that dies is replaced at once; failed starts, and workers dying
young before serving a call, in a row, back off exponentially up to ``_BACKOFF_CAP``. A recycled
worker's replacement starts before the old one is asked to stop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from typing import Any

from snakepit import _errors as errors
from snakepit._adapter import ToolSpec
from snakepit._errors import Reason
from snakepit._observe import Observer
from snakepit._pool.dispatcher import Counters, Dispatcher
from snakepit._pool.quarantine import Quarantine
from snakepit._pool.recycling import RecyclePolicy, served
from snakepit._protocol import TERMINAL, Cancel, Listen, Ping
from snakepit._seam.backend import Backend, Closing, WorkerGone
from snakepit._seam.reactor import Reactor
from snakepit._seam.timing import deadline_after, lock_seconds
from snakepit._seam.workers import Worker, WorkerState

# Restart back-off: workers that fail to start, or die young without serving a call, in a row
# delay the next replacement exponentially.
_YOUNG = 5.0
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 5.0


class Supervisor(Reactor):
    def __init__(
        self,
        dispatcher: Dispatcher,
        backend: Backend,
        counters: Counters,
        *,
        size: int,
        start_timeout: float | None,
        cancel_grace: float | None,
        kill_grace: float,
        shutdown_timeout: float | None,
        heartbeat_interval: float,
        heartbeat_timeout: float | None,
        recycle: RecyclePolicy,
        observer: Observer,
        quarantine: Quarantine,
        telemetry: bool,
    ) -> None:
        super().__init__("snakepit-supervisor", observer)
        self._dispatcher = dispatcher
        self.backend = backend
        self._counters = counters
        self._size = size
        self._start_timeout = start_timeout
        self._cancel_grace = cancel_grace
        self._kill_grace = kill_grace
        self._shutdown_timeout = shutdown_timeout
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self.recycle = recycle
        self.quarantine = quarantine
        self._telemetry = telemetry  # on_event or the logger listen to tools' telemetry, for good
        self._listening = telemetry  # ...or subscribers do, for now

        self._ids = itertools.count(1)
        self._pings = itertools.count(1)
        self.handles: dict[int, Worker] = {}  # every worker not yet disposed of
        self._draining: dict[int, int] = {}  # worker id -> call id being cancelled
        self._stopping = False
        self._young_deaths = 0

        self.tools: list[ToolSpec] | None = None
        self.closing = Closing()  # set when the shutdown begins: callers waiting on workers get pool_closed
        self._start_cond = threading.Condition()
        self._initial = True  # start-up failures fail start(); later ones are retried with back-off
        self._ready = 0
        self._start_error: errors.SnakepitError | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and ``size`` workers; return when all are ready, or raise."""
        self.backend.start(self, self, self.closing)
        self.start_thread()
        for slot in range(self._size):
            self.submit(self._spawn, slot)
        self.call_later(self._heartbeat_interval, self._health_round)
        deadline = deadline_after(self._start_timeout)
        with self._start_cond:
            while self._ready < self._size and self._start_error is None:
                remaining = lock_seconds(deadline)
                if remaining == 0:
                    raise errors.WorkerError(
                        errors.Category.WORKER,
                        Reason.WORKER_START_FAILED,
                        f"workers did not become ready within start_timeout={self._start_timeout}s "
                        f"({self._ready} of {self._size} ready)",
                    )
                self._start_cond.wait(None if remaining < 0 else remaining)
            error, self._start_error = self._start_error, None
            if error is not None:
                try:
                    raise error
                finally:
                    del error  # its traceback holds this frame: no cycle through the local
            self._initial = False

    def abort_start(self) -> None:
        """The pool closes while :meth:`start` waits: it raises ``pool_closed`` at once (its
        caller then shuts the pool down, on its own thread, after the start's last step)."""
        with self._start_cond:
            if self._start_error is None:
                self._start_error = errors.pool_closed()
            self._start_cond.notify_all()

    def shutdown(self) -> None:
        """Stop every worker: gracefully (cleanup runs) within ``shutdown_timeout``, then by force.
        Workers still starting (inside ``initialize()``) are killed at once: a failed ``start()``
        must not wait for them. Callers waiting on a worker are not kept waiting for any of it:
        they get ``pool_closed`` at once (:class:`~snakepit._seam.backend.Closing`).

        The supervisor thread sees the shutdown through: it spawned the workers, and on Linux
        they are killed (``PR_SET_PDEATHSIG``) the moment it exits, cleanup or not.
        """
        self.closing.set()
        self.submit(self._begin_shutdown)
        self.join()
        with self.work_lock:
            leftovers = [h for h in self.handles.values() if h.conn.exit_info is None]
        # Only when the thread never ran (start failed early) or could not watch a process.
        self.backend.finish(leftovers, deadline_after(self._shutdown_timeout), self._kill_grace)
        for handle in list(self.handles.values()):
            handle.conn.exit_status()  # all have ended by now: this reaps them
            self.submit(self._forget_after_shutdown, handle)
        self.backend.close()
        self.closing.close()
        self.observer.close()
        self.close()

    def finished(self) -> bool:
        return self._stopping and all(h.conn.exit_info is not None for h in self.handles.values())

    def _begin_shutdown(self) -> None:
        self._stopping = True
        self.clear_timers()
        self.later(self._shutdown_timeout, self._force_shutdown)
        for handle in list(self.handles.values()):
            if handle.conn.exit_info is not None:
                continue
            if handle.state is WorkerState.STARTING:  # inside initialize(): it would read Shutdown only after
                handle.killed_on_purpose = True
                handle.conn.kill()
                continue
            outstanding = [call for serving in handle.slots or [handle] for call in serving.outstanding]
            if outstanding:  # running, queued (a map's batches) or being drained
                handle.conn.send_control(Cancel(outstanding))
            self._ask_to_stop(handle)

    def _force_shutdown(self) -> None:
        """Past the graceful deadline: SIGTERM, then SIGKILL after ``kill_grace``."""
        for handle in self.handles.values():
            if handle.conn.exit_info is None:
                self.terminate(handle)

    def _forget_after_shutdown(self, handle: Worker) -> None:
        """Every worker has ended: out of service, and disposed of -- a worker a caller still holds
        too (a stream kept unread): its descriptors are the pool's to close, and whatever the
        caller does with it next finds the pool closed first (see ``Closing``), never them."""
        self._dispatcher.worker_died(handle)
        self.dispose(handle, force=True)

    # -- starting --------------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        if self._stopping:
            return
        handle = Worker(next(self._ids), None, slot)
        handle.listening = self._listening
        try:
            self.backend.launch(handle)
        except Exception as exc:  # nothing was left running; the caller waiting on start() must hear of it
            self._start_failed(handle, f"could not start a worker process: {type(exc).__name__}: {exc}", traceback.format_exc())
            return
        self.handles[handle.id] = handle
        self.later(self._start_timeout, self._start_expired, handle)
        self.observer.emit(
            "worker_start", logging.INFO, f"worker {handle.id} starting (pid {handle.pid})", worker_id=handle.id, pid=handle.pid
        )

    # -- what the backend reports (WorkerEvents) ----------------------------------------------------

    def ready(self, handle: Worker, tools: list[Any]) -> None:
        if self.tools is None:
            self.tools = tools
        slots = self.backend.slot_connections(handle)
        if slots:  # it runs calls on several threads: one call slot each
            handle.slots = [self._call_slot(handle, conn) for conn in slots]
        self._tell_listening(handle)
        self._dispatcher.add_worker(handle)
        self.observer.emit(
            "worker_ready",
            logging.INFO,
            f"worker {handle.id} ready (pid {handle.pid})",
            worker_id=handle.id,
            pid=handle.pid,
            startup_s=time.monotonic() - handle.started_monotonic,
        )
        with self._start_cond:
            self._ready += 1
            self._start_cond.notify_all()

    def listen(self, on: bool) -> None:
        """Have every worker send tools' telemetry (``on``: someone subscribed), or not (the last
        subscriber left, and nothing else listens): those running now, and those launched later
        (told at launch; one launched before and ready after, when it is ready)."""
        self._listening = on or self._telemetry
        for handle in self.handles.values():
            if handle.state is not WorkerState.STARTING and handle.conn.exit_info is None:
                self._tell_listening(handle)

    def _tell_listening(self, handle: Worker) -> None:
        if handle.listening != self._listening:
            handle.listening = self._listening
            handle.conn.send_control(Listen(self._listening))

    def telemetry(self, handle: Worker, fields: dict[str, Any]) -> None:
        self.observer.telemetry({**fields, "worker_id": handle.id})

    def _call_slot(self, process: Worker, conn: Any) -> Worker:
        slot = Worker(next(self._ids), conn, process.slot)
        slot.group = process.id
        slot.process = process
        return slot

    def pong(self, handle: Worker, seq: int) -> None:
        if handle.ping is not None and handle.ping[0] == seq:
            handle.ping = None

    def exited(self, handle: Worker) -> None:
        was_starting = handle.state is WorkerState.STARTING
        if self._dispatcher.worker_died(handle):
            self._on_death(handle, was_starting)

    def _start_expired(self, handle: Worker) -> None:
        if handle.state is WorkerState.STARTING:
            handle.start_error = (f"not ready within start_timeout={self._start_timeout}s", None)
            handle.conn.kill()

    def _start_failed(self, handle: Worker, message: str, traceback: str | None) -> None:
        launched = handle.conn is not None
        details: dict[str, Any] = {"worker_id": handle.id if launched else None, "slot": handle.slot}
        if launched and handle.conn.exit_info:
            details.update(handle.conn.exit_info)
        error = errors.WorkerError(
            errors.Category.WORKER, Reason.WORKER_START_FAILED, f"worker failed to start: {message}", details, traceback
        )
        with self._start_cond:
            if self._initial:
                if self._start_error is None:
                    self._start_error = error
                    self._start_cond.notify_all()
                return
        self.observer.emit("worker_start_failed", logging.ERROR, error.message, **details)
        self._dispatcher.workers_cannot_start(error)
        self._replace(handle.slot, young=True, crashed=True)

    # -- draining --------------------------------------------------------------------------------

    def drain(self, handle: Worker, call_id: int) -> None:
        """Wait (off the caller's thread) for a cancelled call to end; kill the worker if it won't."""
        if handle.state is not WorkerState.DRAINING:
            return
        self._draining[handle.id] = call_id
        self.later(self._cancel_grace, self._drain_expired, handle, call_id)
        self.watch(handle.conn.ready_fd, self._read_drain, handle)
        self._read_drain(handle)

    def _read_drain(self, handle: Worker) -> None:
        call_id = self._draining.get(handle.id)
        if call_id is None:
            return
        try:
            messages = handle.conn.take()
        except WorkerGone:  # its death is reported on its own
            self._stop_draining(handle)
            return
        for message in messages:
            if isinstance(message, TERMINAL) and message.id == call_id:
                self._stop_draining(handle)
                self._dispatcher.drained(handle)
                return

    def _stop_draining(self, handle: Worker) -> None:
        if self._draining.pop(handle.id, None) is not None:
            self.unwatch(handle.conn.ready_fd)

    def _drain_expired(self, handle: Worker, call_id: int) -> None:
        if self._draining.get(handle.id) == call_id and handle.state is WorkerState.DRAINING:
            self.observer.emit(
                "cancel_timeout",
                logging.WARNING,
                f"worker {handle.id} did not give up call {call_id} within cancel_grace={self._cancel_grace}s; terminating it",
                worker_id=handle.id,
                pid=handle.pid,
                call_id=call_id,
            )
            self.terminate(handle)

    def scrap(self, handle: Worker) -> None:
        """Kill a worker whose pipe can no longer be read (an exception escaped a read of it,
        losing bytes); it is replaced once it has exited, like any worker that dies."""
        _killed_on_purpose(handle)
        handle.conn.kill()

    def terminate(self, handle: Worker) -> None:
        """SIGTERM now, SIGKILL after ``kill_grace`` if it is still there (a stopped process
        ignores SIGTERM until continued; SIGKILL still ends it)."""
        _killed_on_purpose(handle)
        self.backend.terminate(handle)
        self.later(self._kill_grace, self._kill_if_alive, handle)

    def _kill_if_alive(self, handle: Worker) -> None:
        if handle.conn.exit_info is None:
            handle.conn.kill()

    # -- health: heartbeats and recycling ----------------------------------------------------------

    def _health_round(self) -> None:
        """Ping idle workers, kill the ones that stopped answering, recycle tired idle ones;
        take back workers interrupted callers left behind."""
        if self._stopping:
            return
        self._audit()
        now = time.monotonic()
        for handle in list(self.handles.values()):
            if handle.state is not WorkerState.IDLE:
                continue
            if handle.slots and any(slot.state is not WorkerState.IDLE for slot in handle.slots):
                continue  # a process is idle when all its call slots are
            if handle.ping is not None:
                _, sent = handle.ping
                timeout = self._heartbeat_timeout
                idle_since = max(slot.idle_since for slot in handle.slots) if handle.slots else handle.idle_since
                if timeout is not None and idle_since <= sent and now - sent > timeout:
                    self.observer.emit(
                        "worker_hung",
                        logging.WARNING,
                        f"worker {handle.id} (pid {handle.pid}) has not answered a heartbeat for {now - sent:.1f}s; killing it",
                        worker_id=handle.id,
                        pid=handle.pid,
                        silent_s=now - sent,
                    )
                    self._counters.bump("hung")
                    handle.killed_on_purpose = True
                    handle.conn.kill()
                continue
            if self.recycle.active:
                reason = self.recycle.reason(handle)
                if reason is not None and self._dispatcher.retire_if_idle(handle, reason):
                    self.retire(handle)
                    continue
            handle.ping = (next(self._pings), now)
            handle.conn.send_control(Ping(handle.ping[0]))
        self.later(self._heartbeat_interval, self._health_round)

    def _audit(self) -> None:
        """Take back what callers interrupted half-way left behind (see Dispatcher.audit): a
        worker still checked out by nobody, and one left draining with no drain under way."""
        for handle, calls in self._dispatcher.audit():
            self.observer.emit(
                "worker_reclaimed",
                logging.WARNING,
                f"worker {handle.id} was left checked out by an interrupted caller; cancelling its calls {calls}",
                worker_id=handle.id,
                pid=handle.pid,
                calls=calls,
            )
            handle.conn.send_control(Cancel(calls))
            self.drain(handle, calls[-1])
        for handle in [serving for process in list(self.handles.values()) for serving in process.slots or [process]]:
            if handle.state is WorkerState.DRAINING and handle.id not in self._draining and handle.conn.exit_info is None:
                if handle.conn.broken:
                    self.scrap(handle)
                elif handle.outstanding:
                    self.drain(handle, handle.outstanding[-1])
                else:
                    self._dispatcher.drained(handle)

    def retire(self, handle: Worker) -> None:
        """Replace a worker that is out of service but healthy: start its successor, then ask it
        to stop (``cleanup()`` runs); kill it if it has not stopped within ``shutdown_timeout``."""
        reason = handle.retiring
        self._counters.bump("recycled")
        self._counters.bump(f"recycled_{reason}")
        self.observer.emit(
            "worker_recycle",
            logging.INFO,
            f"recycling worker {handle.id} (pid {handle.pid}): {reason}",
            worker_id=handle.id,
            pid=handle.pid,
            reason=reason,
            requests=served(handle),
        )
        self._spawn(handle.slot)
        self._ask_to_stop(handle)
        self.later(self._shutdown_timeout, self._kill_if_alive, handle)

    def _ask_to_stop(self, handle: Worker) -> None:
        self.backend.ask_to_stop(handle)

    # -- deaths ----------------------------------------------------------------------------------

    def lost(self, handle: Worker) -> None:
        """A caller saw its worker die (it has already taken it out of service): for a call
        slot, its process has died, and with it every other slot."""
        process = handle.process
        if process is not None:
            if not self._dispatcher.worker_died(process):
                return  # its death is being handled already
            handle = process
        self._on_death(handle, False)

    def _on_death(self, handle: Worker, was_starting: bool) -> None:
        for serving in handle.slots or [handle]:
            self._stop_draining(serving)
        info = self.backend.ended(handle)
        if not _held(handle):
            self.dispose(handle)
        expected = self._stopping or handle.retiring is not None
        self.observer.emit(
            "worker_exit",
            logging.INFO if expected else logging.WARNING,
            f"worker {handle.id} (pid {handle.pid}) {'stopped' if expected else 'exited'}: {_describe_exit(info)}",
            worker_id=handle.id,
            pid=handle.pid,
            expected=expected,
            **info,
        )
        if expected:
            return
        self._counters.bump(f"deaths_{info.get('cause', 'killed')}")
        if was_starting:
            message, traceback = handle.start_error or (f"exited during start-up ({_describe_exit(info)})", None)
            self._start_failed(handle, message, traceback)
            return
        # A crash loop is workers dying before they are of any use: soon after start, no call
        # served. One this supervisor killed (a timed-out call it would not give up, a hung
        # heartbeat) says nothing about the next one.
        young = time.monotonic() - handle.started_monotonic < _YOUNG and served(handle) == 0 and not handle.killed_on_purpose
        self._replace(handle.slot, young, crashed=not handle.killed_on_purpose)

    def _replace(self, slot: int, young: bool, crashed: bool) -> None:
        if self._stopping:
            return
        self._young_deaths = self._young_deaths + 1 if young else 0
        delay = 0.0 if self._young_deaths <= 1 else min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (self._young_deaths - 1))
        quarantine = self.quarantine.died(slot) if crashed else None
        if quarantine is not None:
            delay = max(delay, quarantine)
            self.observer.emit(
                "worker_quarantined",
                logging.WARNING,
                f"worker slot {slot} lost {self.quarantine.deaths} workers within {self.quarantine.window:g}s; "
                f"its next worker starts in {delay:.1f}s",
                slot=slot,
                deaths=self.quarantine.deaths,
                window=self.quarantine.window,
                delay=delay,
            )
        self._counters.bump("restarts")
        self.observer.emit(
            "worker_restart",
            logging.WARNING if delay else logging.INFO,
            f"starting a replacement worker in {delay:.2f}s"
            + (" (workers keep dying young)" if delay and quarantine is None else ""),
            delay=delay,
            slot=slot,
        )
        self.later(delay, self._spawn, slot)

    def dispose(self, handle: Worker, *, force: bool = False) -> None:
        """Forget a dead worker nobody uses any more (a process with call slots: once no caller
        holds any of them; ``force``: at shutdown, whoever holds it), once its end has been seen
        to (before that, :meth:`_on_death` will)."""
        if handle.process is not None:
            handle = handle.process
        if (_held(handle) and not force) or handle.conn.exit_info is None or self.handles.pop(handle.id, None) is None:
            return
        self.backend.dispose(handle)


def _held(handle: Worker) -> bool:
    """A caller still holds the worker (or one of its call slots): its connection stays open."""
    return handle.checked_out or any(slot.checked_out for slot in handle.slots or ())


def _killed_on_purpose(handle: Worker) -> None:
    """The supervisor ends this worker (and, for a call slot, its process) itself: no crash."""
    handle.killed_on_purpose = True
    if handle.process is not None:
        handle.process.killed_on_purpose = True


def _describe_exit(info: dict[str, Any]) -> str:
    return info.get("signal") or f"exit code {info.get('exit_code')}"

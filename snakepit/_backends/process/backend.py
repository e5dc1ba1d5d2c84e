"""The process backend's mechanisms: how a worker process is started, watched and ended.

The supervisor (:mod:`snakepit._pool.supervisor`) decides what happens and when; this carries it
out for local processes. Everything it watches is a file descriptor in the supervisor's
selector, so it reacts at once and never polls:

* a process's pidfd becomes readable when the process exits, whatever killed it (without
  pidfds, a thread blocked in ``waitpid`` stands in);
* the responses pipe of a *starting* worker delivers ``Ready`` or ``StartFailed``;
* the events pipe delivers heartbeat answers and log records, stdout and stderr deliver lines:
  all relayed to :mod:`logging` (see :mod:`.relay`).

Workers are spawned from the supervisor's long-lived thread: on Linux ``PR_SET_PDEATHSIG`` fires
when the *thread* that forked the child exits, so spawning from a short-lived caller thread
would kill them.

With ``start_method="forkserver"`` (the default) workers are forked by a template process that
has imported what they import (see :mod:`.template`); if it cannot serve, or stops serving,
workers start cold from then on, and a warning says why.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from snakepit import _errors as errors
from snakepit._backends.process.janitor import Janitor
from snakepit._backends.process.launcher import SNAKEPIT_ROOT, prefer_for_oom_kill, spawn
from snakepit._backends.process.oom import OomWitness
from snakepit._backends.process.relay import STDERR_LEVEL, STDOUT_LEVEL, LineSplitter, LogRelay
from snakepit._backends.process.segments import Attachments, Segments
from snakepit._backends.process.slots import Mux
from snakepit._backends.process.template import Template, TemplateUnavailable, adapter_modules
from snakepit._errors import Reason
from snakepit._protocol import Log, Pong, Ready, Shutdown, StartFailed, Telemetry, encode_frame
from snakepit._seam.backend import Closing, WorkerEvents
from snakepit._seam.launch import BackendOptions, LaunchSpec, build_launch_spec
from snakepit._seam.reactor import Reactor
from snakepit._seam.workers import Worker

START_METHODS = ("forkserver", "spawn")
_log = logging.getLogger("snakepit")


class ProcessBackend:
    name = "process"
    encodes = True  # a worker encodes a call's encode= values: the owner forwards bytes

    def __init__(self, launch: LaunchSpec, start_method: str = "forkserver", start_timeout: float | None = None) -> None:
        self._launch = launch
        self._start_method = start_method
        self._start_timeout = start_timeout
        self._template: Template | None = None
        self._oom = OomWitness()
        self._muxes: dict[int, Mux] = {}  # worker id -> the reader of a process with several threads
        self._segments = Segments()  # large call arguments in shared memory, reused across calls
        self.attachments = lambda: Attachments(self._segments)
        self.relay = LogRelay()
        self.janitor = Janitor()
        self._splitters: dict[int, LineSplitter] = {}  # output fd -> its partial line
        self._reactor: Reactor = None  # type: ignore[assignment]  # set by start()
        self._events: WorkerEvents = None  # type: ignore[assignment]
        self._closing: Closing = None  # type: ignore[assignment]

    def start(self, reactor: Reactor, events: WorkerEvents, closing: Closing) -> None:
        self._reactor = reactor
        self._events = events
        self._closing = closing
        self.janitor.start()
        if self._start_method == "forkserver":
            launch = self._launch
            try:
                self._template = Template(
                    SNAKEPIT_ROOT,
                    adapter_modules(launch.adapter, launch.preload),
                    launch.sys_path,
                    launch.cwd,
                    dict(launch.env),
                    self._start_timeout,
                )
            except OSError as exc:
                _log.warning("snakepit: cannot start the template process (%s); workers start cold", exc)
            else:
                prefer_for_oom_kill(self._template.pid)

    # -- starting --------------------------------------------------------------------------------

    def launch(self, worker: Worker) -> None:
        """Start ``worker``'s process (the supervisor's thread); raises if none could start."""
        conn = self._spawn(worker)
        worker.conn = conn
        conn.on_group_ended = self.janitor.forget
        counter = self._oom.counter_of(conn.pid)
        conn.killed_by_oom = functools.partial(self._oom.killed_by_oom, conn.pid, counter)
        self.janitor.watch(conn.pid)
        self._watch(worker, conn.responses_fd, self._read_start)
        self._watch(worker, conn.pipes.events, self._read_events)
        for fd, level in ((conn.pipes.stdout, STDOUT_LEVEL), (conn.pipes.stderr, STDERR_LEVEL)):
            self._splitters[fd] = LineSplitter()
            self._watch(worker, fd, self._read_output, fd, level)
        if conn.pidfd is not None:
            self._watch(worker, conn.pidfd, self._events.exited)
        else:
            threading.Thread(target=self._wait_exit, args=(worker,), daemon=True).start()

    def _spawn(self, worker: Worker) -> Any:
        env = self._launch.env_for(worker.slot)
        # A worker whose environment is not the template's (a per-slot worker_env) starts cold:
        # what a library read from the environment when the template imported it would be wrong.
        if self._template is not None and env == self._template.env:
            try:
                return spawn(worker, self._launch, env, self._closing, self._template)
            except TemplateUnavailable as exc:
                _log.warning("snakepit: the template process cannot fork workers (%s); they start cold from now on", exc)
                self._close_template()
        return spawn(worker, self._launch, env, self._closing)

    def _close_template(self) -> None:
        template, self._template = self._template, None
        if template is not None:
            template.close()

    def slot_connections(self, worker: Worker) -> list[Any] | None:
        mux = self._muxes.get(worker.id)
        return None if mux is None else list(mux.slots)

    def _wait_exit(self, worker: Worker) -> None:
        """Without pidfds, a thread blocked in waitpid is the process sentinel."""
        worker.conn.process.wait()
        self._reactor.submit(self._events.exited, worker)

    def _read_start(self, worker: Worker) -> None:
        conn = worker.conn
        messages = conn.reader.read(conn.responses_fd)
        if messages is None:
            self._unwatch(worker, conn.responses_fd)  # the exit watch reports the death
            return
        for message in messages:
            if type(message) is Ready:
                self._unwatch(worker, conn.responses_fd)
                if self._launch.threads > 1:  # its calls share the pipe: a reader sorts what it says
                    self._muxes[worker.id] = Mux(conn, self._launch.threads)
                self._events.ready(worker, list(message.tools))
                return
            if type(message) is StartFailed:
                worker.start_error = (message.message, message.traceback)

    # -- output and events ------------------------------------------------------------------------

    def _read_events(self, worker: Worker) -> None:
        conn = worker.conn
        messages = conn.events.read(conn.pipes.events)
        if messages is None:
            self._unwatch(worker, conn.pipes.events)
            return
        for message in messages:
            if type(message) is Pong:
                self._events.pong(worker, message.seq)
            elif type(message) is Log:
                self.relay.emit(worker.id, message.level, message.name, message.message, message.correlation_id)
            elif type(message) is Telemetry:
                self._events.telemetry(worker, message.fields)

    def _read_output(self, worker: Worker, fd: int, level: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            if worker.conn.exit_info is None:
                return
            data = b""  # the process is gone and nothing is left: treat as end of file
        splitter = self._splitters[fd]
        lines = splitter.feed(data) if data else splitter.flush()
        for line in lines:
            self.relay.emit(worker.id, level, "stdout" if level == STDOUT_LEVEL else "stderr", line)
        if not data:
            self._unwatch(worker, fd)
            del self._splitters[fd]

    # -- stopping --------------------------------------------------------------------------------

    def ask_to_stop(self, worker: Worker) -> None:
        """Ask it to stop after what it is doing (``cleanup()`` runs)."""
        try:
            worker.conn.send(encode_frame(Shutdown()))
        except Exception:  # already gone: nothing to stop
            pass

    def terminate(self, worker: Worker) -> None:
        """Ask it to stop now (SIGTERM; a stopped process ignores it until continued)."""
        worker.conn.signal(signal.SIGTERM)

    def ended(self, worker: Worker) -> dict[str, Any]:
        """The worker was seen dying: make sure it is gone, reap it, stop watching its calls.
        How it ended (exit code, signal)."""
        conn = worker.conn
        if not conn.has_exited():  # end of file without exit
            conn.kill()
        info = conn.reap()
        for fd in (conn.pidfd, conn.responses_fd):
            self._unwatch(worker, fd)
        return info

    def dispose(self, worker: Worker) -> None:
        """Forget a dead worker whose pipes nobody uses any more: relay its last words on
        stdout and stderr, up to end of file, and close them."""
        conn = worker.conn
        for fd in list(conn.watched):
            while fd in self._splitters:
                self._read_output(worker, fd, STDOUT_LEVEL if fd == conn.pipes.stdout else STDERR_LEVEL)
            self._unwatch(worker, fd)
        mux = self._muxes.pop(worker.id, None)
        if mux is not None:
            mux.join()  # it reads the pipes until the process has ended: before they close
            for slot in mux.slots:
                slot.close()
        conn.close_fds()

    def finish(self, leftovers: Iterable[Worker], deadline: float | None, kill_grace: float) -> None:
        """At shutdown, from the caller's thread once supervision has ended: stop what is left
        (only when the supervisor never ran, or could not watch a process), then reap all."""
        leftovers = list(leftovers)
        for worker in leftovers:
            worker.conn.wait_exit(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for worker in leftovers:
            if not worker.conn.has_exited():
                worker.conn.signal(signal.SIGTERM)
        kill_at = time.monotonic() + kill_grace
        for worker in leftovers:
            if not worker.conn.wait_exit(max(0.0, kill_at - time.monotonic())):
                worker.conn.kill()

    def close(self) -> None:
        self._close_template()
        self._oom.close()
        self.janitor.stop()
        self.relay.close()
        self._segments.close()

    # -- selector bookkeeping --------------------------------------------------------------------

    def _watch(self, worker: Worker, fd: int, callback: Any, *args: Any) -> None:
        self._reactor.watch(fd, callback, worker, *args)
        worker.conn.watched.add(fd)

    def _unwatch(self, worker: Worker, fd: int | None) -> None:
        if fd is not None and fd in worker.conn.watched:
            worker.conn.watched.discard(fd)
            self._reactor.unwatch(fd)


def create(adapter: Any, adapter_args: Mapping[str, Any] | None, worker_env: Any, options: BackendOptions) -> ProcessBackend:
    """The process backend for ``adapter``; ``invalid_config`` for an option that is not its own."""
    if options.ray_address is not None or options.actor_options is not None:
        raise errors.validation(Reason.INVALID_CONFIG, "ray_address and actor_options apply to backend='ray' only")
    start_method = "forkserver" if options.start_method is None else options.start_method
    if start_method not in START_METHODS:
        raise errors.validation(
            Reason.INVALID_CONFIG, f"unknown start_method {start_method!r}: choose one of {', '.join(map(repr, START_METHODS))}"
        )
    launch = build_launch_spec(
        adapter, adapter_args, worker_env, size=options.size, threads=options.threads, preload=options.preload
    )
    return ProcessBackend(launch, start_method, options.start_timeout)

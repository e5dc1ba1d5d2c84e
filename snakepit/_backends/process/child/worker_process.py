"""What runs inside a worker process: a :class:`~snakepit._hosting.ToolHost` fed from pipes.

The main thread reads calls from the requests pipe and runs them in the host, which writes
results and chunks to the responses pipe directly, with no thread hand-off on the hot path. A
control thread reads the control pipe: a ``Cancel`` of the running call sends ``CANCEL_SIGNAL``
to the main thread, whose handler lets the host raise :class:`~snakepit.CallCancelled` into the
tool (see :mod:`snakepit._hosting.host`); a ``Ping`` is answered on the events pipe.

The worker never outlives its owner: on Linux the kernel sends SIGKILL when the owner dies
(``PR_SET_PDEATHSIG``), and on every OS end-of-file on the control pipe ends the process.
SIGINT is ignored: Ctrl-C in a terminal is the owner's to handle; the owner then shuts us down.

Processes a tool starts do not outlive the worker: it leads its own process group and adopts
orphaned descendants (a child subreaper), ends them all after ``cleanup()`` when it shuts down,
and the owner ends its descendants and its group when it kills or reaps it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from time import monotonic
from typing import Any

from snakepit import telemetry
from snakepit._backends.process import segments
from snakepit._backends.process.child.events import Events
from snakepit._backends.process.child.orphans import adopt_orphans, die_with_parent, end_descendants, name_process, reap_orphans
from snakepit._backends.process.child.outbox import Outbox
from snakepit._backends.process.child.threads import SharedOutbox, ToolThreads
from snakepit._backends.process.spill import lent_reporter, record_faults
from snakepit._hosting import ToolHost
from snakepit._protocol import (
    Batch,
    Boot,
    Call,
    Cancel,
    Credit,
    FrameReader,
    Listen,
    Ping,
    Pong,
    Ready,
    Shutdown,
    StartFailed,
    ToWorker,
)

_REAP_EVERY = 0.1  # seconds between two looks for adopted orphans' zombies (see orphans.py)

# A real-time signal: unlike SIGUSR1/2, libraries and tools hardly ever claim one.
CANCEL_SIGNAL = signal.SIGRTMIN + 1 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2


class Worker:
    """One worker process: calls run on the main thread, or (``Boot.threads`` > 1) on tool
    threads of their own (see :mod:`.threads`)."""

    def __init__(self, requests: int, control: int, responses: int, events: int, spill: int, segments_fd: int) -> None:
        self._requests = requests
        self._control = control
        self._responses = responses
        self._events_fd = events
        self._spill = spill
        self._socket = socket.socket(fileno=segments_fd)  # large values' memfds, both ways
        self._main = threading.get_ident()
        self._threads: ToolThreads | None = None

    def boot(self) -> None:
        reader = FrameReader(ToWorker, ext_hook=segments.receiver(self._socket, segments.Mappings()))
        lender = segments.lender()  # the segments of this process's values, and of its snakepit.shared arrays
        lender.report = lent_reporter(self._spill)  # which the owner counts in its memory
        boot = reader.read_blocking(self._requests)
        if not isinstance(boot, Boot):
            os._exit(2)
        if boot.threads > 1:
            self._out: Any = SharedOutbox(self._responses, self._spill, self._socket, lender)
            self._threads = ToolThreads(self._out, boot.threads)
            self._host: ToolHost = self._threads.hosts[0]
            self._events = Events(self._events_fd, shield=self._threads.shield)
        else:
            self._out = Outbox(self._responses, self._spill, share=segments.sender(self._socket, lender))
            self._host = ToolHost(self._out)
            self._events = Events(self._events_fd, shield=self._host.shield)
        sys.path[:] = boot.sys_path
        try:
            os.chdir(boot.cwd)
        except OSError:
            pass
        self._events.relay_logging(boot.log_level)
        if boot.telemetry:
            telemetry.install(self._events.send_telemetry)
        started = (
            self._threads.start(boot.adapter, boot.adapter_args)
            if self._threads
            else self._host.start(boot.adapter, boot.adapter_args)
        )
        if (
            type(started) is Ready
            and self._threads is not None
            and not getattr(self._threads.adapter_class(), "thread_safe", False)
        ):
            name = self._threads.adapter_class().__qualname__
            started = StartFailed(
                f"threads_per_worker={boot.threads} runs calls of one {name} instance at once on several threads, "
                f"which it does not declare safe: set `thread_safe = True` on the class if it is, "
                "or use threads_per_worker=1",
                "",
            )
        if type(started) is not Ready:
            self._out.send(started)
            self._out.flush()
            os._exit(3)
        self._out.send(Ready(os.getpid(), started.tools))
        self._reader = reader

    def serve(self) -> None:
        threads = self._threads
        if threads is None:
            signal.signal(CANCEL_SIGNAL, self._interrupt)
        else:
            threads.run_threads()
        threading.Thread(target=self._control_loop, name="snakepit-control", daemon=True).start()
        read = self._reader.read_blocking
        run = self._host.run if threads is None else threads.submit
        next_reap = 0.0
        while True:
            message = read(self._requests)
            if message is None:  # the owner is gone
                os._exit(0)
            kind = type(message)
            if kind is Call or kind is Batch:
                run(message)
                now = monotonic()
                if now >= next_reap:  # a few times a second at most
                    next_reap = now + _REAP_EVERY
                    reap_orphans()
            elif kind is Shutdown:
                break
        if threads is not None:
            threads.stop()
        self._host.cleanup()
        end_descendants()
        self._out.flush()

    def _control_loop(self) -> None:
        reader = FrameReader(ToWorker)
        while True:
            try:
                message = reader.read_blocking(self._control)
            except OSError:
                message = None
            if message is None:  # the owner is gone: nobody will read what we produce
                os._exit(0)
            if type(message) is Cancel:
                if self._threads is not None:
                    self._out.cancel(message.ids)
                    self._threads.cancel(message.ids)
                elif self._host.cancel(message.ids):
                    signal.pthread_kill(self._main, CANCEL_SIGNAL)
            elif type(message) is Credit:
                self._out.grant(message.id, message.count)
            elif type(message) is Ping:
                self._events.send(Pong(message.seq), essential=True)
            elif type(message) is Listen:
                telemetry.install(self._events.send_telemetry if message.on else None)

    def _interrupt(self, signum: int, frame: Any) -> None:
        """``CANCEL_SIGNAL``, on the main thread: the host stops the running tool if its call
        is cancelled."""
        self._host.interrupt()


def main() -> None:
    """A cold worker: started by the owner as ``python -c ... <fds> <owner pid>``."""
    *fds, owner = (int(arg) for arg in sys.argv[1:8])
    serve_worker(*fds, parent=owner)


def serve_worker(requests: int, control: int, responses: int, events: int, spill: int, segments_fd: int, *, parent: int) -> None:
    """Serve the owner on these pipes until it shuts us down or goes away. ``parent``: the
    process whose death must end ours (the owner, or the template that forked us)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process("snakepit-worker")
    die_with_parent()
    adopt_orphans()
    if os.getppid() != parent:  # it died before PDEATHSIG was armed
        os._exit(0)
    for fd in (requests, control, responses, events, spill, segments_fd):
        os.set_inheritable(fd, False)
    record_faults(spill)  # a fatal signal's Python stacks, for the owner's post-mortem
    worker = Worker(requests, control, responses, events, spill, segments_fd)
    worker.boot()
    worker.serve()

"""Starting worker processes: pipes, a process, and a boot message.

A worker is never a bare ``fork`` of the owner, which runs threads (supervisor, gRPC) that a
forked child would inherit in an unknown state: it is forked by the template (see
:mod:`.template`), a fresh single-threaded process, or it is a fresh interpreter started with
``subprocess``. Like multiprocessing's *spawn*, the child gets the owner's ``sys.path`` and working
directory, sent in the first frame (``Boot``) rather than on the command line. What it starts is
described by a :class:`~snakepit._seam.launch.LaunchSpec`.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from snakepit import _protocol as protocol
from snakepit._backends.process import spill
from snakepit._backends.process.connection import ProcessConnection, WorkerPipes
from snakepit._backends.process.template import Template
from snakepit._protocol import Boot
from snakepit._seam.backend import Closing
from snakepit._seam.launch import LaunchSpec
from snakepit._seam.workers import Worker

_PIPE_SIZE = 1 << 20  # the Linux default maximum; bigger pipes mean fewer wake-ups per stream

# Under memory pressure the kernel should kill a worker, which the pool survives, not the owner.
_OOM_SCORE_ADJ_ABOVE_OWNER = 500

SNAKEPIT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_BOOTSTRAP = "import sys; sys.path.insert(0, {root!r}); from snakepit._backends.process.child.worker_process import main; main()"


def _pipe(opened: list[int]) -> tuple[int, int]:
    read, write = os.pipe()
    opened += (read, write)
    return read, write


def _enlarge(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (OSError, AttributeError):  # not Linux, or above the system's limit: keep the default
        pass


def spawn(
    worker: Worker, spec: LaunchSpec, env: Mapping[str, str], closing: Closing, template: Template | None = None
) -> ProcessConnection:
    """Start one worker process and send it its boot frame; it reports ``Ready`` on its own.

    Pipes: requests and control (owner to worker), responses and events (worker to owner), and
    the worker's stdout and stderr, which the owner relays to :mod:`logging`. The spill segment
    is shared memory (see :mod:`.spill`). The process is forked by ``template`` when one is
    given (``TemplateUnavailable`` if it cannot; its environment is ``env``), else a fresh
    interpreter with environment ``env``.
    """
    boot = protocol.encode_frame(
        Boot(worker.id, spec.sys_path, spec.cwd, spec.adapter, spec.adapter_args, spec.log_level, worker.listening, spec.threads)
    )
    opened: list[int] = []  # closed again if anything below fails (e.g. out of descriptors)
    try:
        requests_r, requests_w = _pipe(opened)
        control_r, control_w = _pipe(opened)
        responses_r, responses_w = _pipe(opened)
        events_r, events_w = _pipe(opened)
        stdout_r, stdout_w = _pipe(opened)
        stderr_r, stderr_w = _pipe(opened)
        spill_fd = spill.create()
        opened.append(spill_fd)
        owner_socket, worker_socket = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # for memfds
        for end in (owner_socket, worker_socket):
            # Backpressure for values that travel beside the pipe: a sender blocks once about ten
            # values' segments wait to be received, as a pipe blocks when full.
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        opened += (owner_socket.detach(), worker_socket.detach())
        owner_socket_fd, worker_socket_fd = opened[-2:]
        child_ends = (requests_r, control_r, responses_w, events_w, spill_fd, worker_socket_fd)
        for fd in (requests_w, responses_w, events_w, stdout_w, stderr_w):
            _enlarge(fd)
        if template is not None:
            process: Any = template.fork(worker.id, (*child_ends, stdout_w, stderr_w))
        else:
            process = _start_interpreter(spec, env, child_ends, stdout_w, stderr_w)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    for fd in (requests_r, control_r, responses_w, events_w, stdout_w, stderr_w, worker_socket_fd):  # the child's now
        os.close(fd)
    for fd in (responses_r, events_r, stdout_r, stderr_r):
        os.set_blocking(fd, False)
    pipes = WorkerPipes(requests_w, control_w, responses_r, events_r, stdout_r, stderr_r, spill_fd, owner_socket_fd)
    conn = ProcessConnection(worker.id, process, pipes, closing)
    try:
        protocol.write_all(requests_w, boot)
    except OSError:
        pass  # it died at once; the supervisor sees the exit
    prefer_for_oom_kill(conn.pid)
    return conn


def prefer_for_oom_kill(pid: int) -> None:
    """Make ``pid`` the OOM killer's choice before the owner (raising it needs no privilege)."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            owner = int(f.read())
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(min(1000, owner + _OOM_SCORE_ADJ_ABOVE_OWNER)))
    except (OSError, ValueError):  # not Linux, or it is already gone
        pass


def _start_interpreter(
    spec: LaunchSpec, env: Mapping[str, str], child_ends: tuple[int, ...], stdout: int, stderr: int
) -> subprocess.Popen[bytes]:
    """A cold worker: a fresh interpreter that imports everything itself."""
    command = [sys.executable, "-c", _BOOTSTRAP.format(root=SNAKEPIT_ROOT), *(str(fd) for fd in child_ends), str(os.getpid())]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        pass_fds=child_ends,
        env=dict(env),
        cwd=spec.cwd,
        close_fds=True,
        process_group=0,  # its own group: what its tools start can be ended with it
    )

"""Starting worker processes: pipes, a process, and a boot message.

A worker is never a bare ``fork`` of the owner, which runs threads (supervisor, gRPC) that a
forked child would inherit in an unknown state: it is forked by the template (see
:mod:`.template`), a fresh single-threaded process, or it is a fresh interpreter started with
``subprocess``. Like multiprocessing's *spawn*, the child gets the owner's ``sys.path`` and working
directory, sent in the first frame (``Boot``) rather than on the command line. The adapter class
travels by import path when the worker can import it by that name, and by value (cloudpickle)
otherwise: a class in ``__main__``, a notebook cell, or a function's local scope.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from ... import errors, protocol
from ...adapter import import_by_path
from ...errors import Reason
from ...protocol import Boot
from ..base import Closing
from . import spill
from .connection import ProcessConnection, WorkerPipes
from .template import Template

# One thread per BLAS/OpenMP runtime per worker: N workers already use N cores.
SINGLE_THREADED_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}

_PIPE_SIZE = 1 << 20  # the Linux default maximum; bigger pipes mean fewer wake-ups per stream

# Under memory pressure the kernel should kill a worker, which the pool survives, not the owner.
_OOM_SCORE_ADJ_ABOVE_OWNER = 500

SNAKEPIT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_BOOTSTRAP = "import sys; sys.path.insert(0, {root!r}); from snakepit.backends.process.child.worker_process import main; main()"


def adapter_reference(adapter: Any, by_value: bool = False) -> Any:
    """How the adapter travels: ``"module:Qualname"`` if importable by that name, else pickled.
    ``by_value``: pickled with its module's code (for machines that cannot import it)."""
    if isinstance(adapter, str):
        if ":" not in adapter:
            raise errors.validation(
                Reason.INVALID_CONFIG, f"adapter string must look like 'package.module:Class', got {adapter!r}"
            )
        return adapter
    if not isinstance(adapter, type):
        raise errors.validation(
            Reason.INVALID_CONFIG, f"adapter must be a class or a 'module:Class' string, got {type(adapter).__name__}"
        )
    path = f"{adapter.__module__}:{adapter.__qualname__}"
    if by_value:
        return _by_value(adapter)
    if adapter.__module__ != "__main__" and "<locals>" not in path and _resolves(path, adapter):
        return path
    return protocol.pickled(adapter, protocol._cloud_dumps)


def _by_value(adapter: type) -> Any:
    import cloudpickle

    module = sys.modules.get(adapter.__module__)
    registered = False
    if module is not None and adapter.__module__ != "__main__":
        try:
            cloudpickle.register_pickle_by_value(module)
            registered = True
        except ValueError:  # already by value
            pass
    try:
        return protocol.pickled(adapter, protocol._cloud_dumps)
    finally:
        if registered:
            cloudpickle.unregister_pickle_by_value(module)


def _resolves(path: str, adapter: type) -> bool:
    try:
        return import_by_path(path) is adapter
    except Exception:
        return False


WorkerEnv = Union[Mapping[str, str], Callable[[int], Mapping[str, str]], None]


@dataclass
class LaunchSpec:
    """Everything needed to start one more worker like the others."""

    adapter: Any
    adapter_args: Any
    env: Mapping[str, str]  # what every worker's environment holds
    slot_envs: Sequence[Mapping[str, str]] = ()  # a per-slot worker_env's additions, by slot
    cwd: str = field(default_factory=os.getcwd)
    sys_path: list[str] = field(default_factory=lambda: list(sys.path))
    log_level: int = field(default_factory=lambda: logging.getLogger("snakepit.worker").getEffectiveLevel())
    telemetry: bool = False  # the owner listens to tools' telemetry (see snakepit.telemetry)
    threads: int = 1  # calls a worker runs at once (threads_per_worker)

    def env_for(self, slot: int) -> dict[str, str]:
        """The environment of the worker in ``slot`` (and of every replacement of it)."""
        return {**self.env, **self.slot_envs[slot]} if self.slot_envs else dict(self.env)


def build_launch_spec(
    adapter: Any,
    adapter_args: Mapping[str, Any] | None,
    worker_env: WorkerEnv,
    *,
    size: int = 1,
    by_value: bool = False,
    telemetry: bool = False,
    threads: int = 1,
) -> LaunchSpec:
    """``worker_env``: a mapping for every worker, or a callable ``(slot) -> mapping`` called
    here once per slot ``0..size-1`` (so its errors are the constructor's)."""
    if adapter_args is not None and not isinstance(adapter_args, Mapping):
        raise errors.validation(Reason.INVALID_CONFIG, "adapter_args must be a mapping of keyword arguments")
    slot_envs: list[dict[str, str]] = []
    if callable(worker_env):
        slot_envs = [_checked_env(_call_env(worker_env, slot), f"worker_env({slot})") for slot in range(size)]
    elif worker_env is not None:
        worker_env = _checked_env(worker_env, "worker_env")
    # Unbuffered, so what a tool prints reaches the owner's logs when it is printed.
    env = {
        **os.environ,
        **SINGLE_THREADED_ENV,
        "PYTHONUNBUFFERED": "1",
        **(worker_env if isinstance(worker_env, Mapping) else {}),
    }
    return LaunchSpec(
        adapter=adapter_reference(adapter, by_value),
        # Encoded now: the boot frame is built on the supervisor thread, where an error would only be logged.
        adapter_args=protocol.wire_value(dict(adapter_args or {}), dumps=protocol._cloud_dumps),
        env=env,
        slot_envs=slot_envs,
        telemetry=telemetry,
        threads=threads,
    )


def _call_env(worker_env: Callable[[int], Any], slot: int) -> Any:
    try:
        return worker_env(slot)
    except Exception as exc:
        raise errors.validation(Reason.INVALID_CONFIG, f"worker_env({slot}) raised {type(exc).__name__}: {exc}") from exc


def _checked_env(env: Any, what: str) -> dict[str, str]:
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise errors.validation(Reason.INVALID_CONFIG, f"{what} must be a mapping of str to str, got {env!r}")
    return dict(env)


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
    worker_id: int, spec: LaunchSpec, env: Mapping[str, str], closing: Closing, template: Template | None = None
) -> ProcessConnection:
    """Start one worker process and send it its boot frame; it reports ``Ready`` on its own.

    Pipes: requests and control (owner to worker), responses and events (worker to owner), and
    the worker's stdout and stderr, which the owner relays to :mod:`logging`. The spill segment
    is shared memory (see :mod:`.spill`). The process is forked by ``template`` when one is
    given (``TemplateUnavailable`` if it cannot; its environment is ``env``), else a fresh
    interpreter with environment ``env``.
    """
    boot = protocol.encode_frame(
        Boot(worker_id, spec.sys_path, spec.cwd, spec.adapter, spec.adapter_args, spec.log_level, spec.telemetry, spec.threads)
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
            process: Any = template.fork(worker_id, (*child_ends, stdout_w, stderr_w))
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
    conn = ProcessConnection(worker_id, process, pipes, closing)
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

"""The template: a fresh process that imports once and forks workers on demand (forkserver-style).

A cold worker is a new interpreter that imports snakepit, its dependencies and the adapter's
module before it can serve: most of a worker's start-up. The template does that once, then forks
each worker from itself, already imported. It is started fresh by the owner (``subprocess``,
never a fork of the owner, which runs threads), runs no threads of its own, and refuses to serve
if importing the adapter's module started any (a fork would copy them stopped, their locks held):
the owner then starts workers cold.

It talks to the owner over a ``SOCK_SEQPACKET`` socket, one request at a time:

* ``("fork", worker_id)`` with the worker's pipe ends attached (``SCM_RIGHTS``): fork a worker
  on them; answer ``("forked", pid, worker_id)`` with a pidfd of it attached (opened before
  anything could reap it, so it cannot name another process), or ``("error", why, worker_id)``;
* ``("reap", pid)``: the worker has exited (the owner saw its pidfd); reap it and answer
  ``("reaped", pid, returncode)``: the owner reports exit codes and signals as for its own
  children. Until asked, an exited worker stays a zombie, so its pid and process-group id name
  nothing else while the owner ends what is left of its group;
* ``("exit",)``: the pool has closed (a process the owner forked may hold the socket open, so
  its end-of-file cannot be relied on).

Its workers are its children, so their ``PR_SET_PDEATHSIG`` names the template: they die with it.
The template watches the owner through a pidfd; when the owner dies, or closes the socket, it
kills every worker it forked (and their process groups), reaps them, and exits.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import select
import signal
import socket
import sys
import threading
import traceback
from typing import Any

import msgspec

_WORKER_FDS = 8  # requests, control, responses, events, spill, segments socket, stdout, stderr
_MESSAGE_SIZE = 4096
_EXIT = msgspec.msgpack.encode(["exit"])


def _send(sock: socket.socket, message: Any, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    socket.send_fds(sock, [msgspec.msgpack.encode(message)], list(fds))


def _threads() -> int:
    """Threads of this process, native ones included (a library may start its own)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _open_files() -> dict[int, str]:
    """This process's descriptors, and what each names."""
    files = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            files[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return files


def _close_except(keep: set[int]) -> None:
    """Close every descriptor but ``keep`` (the worker must not hold the template's)."""
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the directory's own descriptor, already closed
                pass


class Template:
    def __init__(self, sock: socket.socket, owner: int) -> None:
        self._sock = sock
        self._owner = owner
        self._children: set[int] = set()  # forked and not yet reaped

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        owner_fd = os.pidfd_open(self._owner)
        poller.register(owner_fd, select.POLLIN)
        self._owner_fd = owner_fd
        while True:
            ready = dict(poller.poll())
            if owner_fd in ready:
                break  # the owner is gone
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, _MESSAGE_SIZE, _WORKER_FDS)
            except OSError:
                break
            if not data:  # the owner closed the socket: the pool is closed
                break
            if data == _EXIT:
                break
            try:
                self._handle(msgspec.msgpack.decode(data), fds)
            finally:
                for fd in fds:
                    os.close(fd)
        self._end_all()

    def _handle(self, message: list[Any], fds: list[int]) -> None:
        if message[0] == "fork":
            template = os.getpid()
            try:
                pid = os.fork()
            except OSError as exc:
                _send(self._sock, ["error", f"fork failed: {exc}", message[1]])
                return
            if pid == 0:
                self._become_worker(fds, template)  # never returns
            self._children.add(pid)
            pidfd = os.pidfd_open(pid)
            try:
                _send(self._sock, ["forked", pid, message[1]], [pidfd])
            finally:
                os.close(pidfd)
        elif message[0] == "reap":
            pid = message[1]
            code = self._reap(pid) if pid in self._children else None
            _send(self._sock, ["reaped", pid, code])

    def _reap(self, pid: int) -> int:
        self._children.discard(pid)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def _become_worker(self, fds: list[int], template: int) -> None:
        """In the forked child: take the worker's pipes, drop the template's, serve, and exit as
        a cold worker's interpreter would: wait for non-daemon threads (an executor's jobs too),
        run ``atexit`` handlers, flush; an escaping exception is printed."""
        code = 1
        try:
            from snakepit._backends.process.child.worker_process import serve_worker

            os.setpgid(0, 0)  # its own group, as a cold worker's: what its tools start ends with it
            os.dup2(fds[6], 1)
            os.dup2(fds[7], 2)
            worker_fds = fds[:6]
            _close_except({0, 1, 2, *worker_fds})  # only the template's: the import left none open
            gc.enable()
            _reseed()
            serve_worker(*worker_fds, parent=template)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                threading._shutdown()  # type: ignore[attr-defined]
                atexit._run_exitfuncs()
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
            finally:
                os._exit(code)

    def _end_all(self) -> None:
        """The owner has gone (or closed the pool): end every worker left, and their groups."""
        for pid in self._children:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in list(self._children):
            try:
                self._reap(pid)
            except ChildProcessError:
                pass


def _reseed() -> None:
    """A forked worker would otherwise draw the template's random numbers, as every other
    worker does (``random`` reseeds itself after a fork; numpy's global generator does not)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:
            pass


def _preload(modules: list[str], sys_path: list[str], cwd: str) -> str | None:
    """Import what every worker imports: the worker's own modules and the adapter's modules.
    A failing import is left for the worker to report, as a cold one would."""
    sys.path[:] = sys_path
    try:
        os.chdir(cwd)
    except OSError:
        pass
    importlib.import_module("snakepit._backends.process.child.worker_process")
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle
    from snakepit._backends.process.child.orphans import name_process

    name_process("snakepit-tmpl")
    fd, owner = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    if os.getppid() != owner:
        os._exit(0)
    gc.disable()  # nothing to collect while importing; frozen below, so forks share the pages
    data, _, _, _ = socket.recv_fds(sock, 1 << 20, 0)
    modules, sys_path, cwd = msgspec.msgpack.decode(data)
    inherited = _open_files()
    failed = _preload(modules, sys_path, cwd)
    # Files or sockets the import opened would be shared by every forked worker (a cold one opens
    # its own), and a worker drops the template's descriptors: such an adapter starts cold.
    left_open = sorted(what for fd, what in _open_files().items() if fd not in inherited)
    gc.collect()
    gc.freeze()  # a worker's collections would otherwise touch (and copy) every inherited object
    _send(sock, ["hello", os.getpid(), _threads(), failed, left_open])
    if _threads() > 1 or left_open:
        os._exit(0)  # the owner starts workers cold
    Template(sock, owner).serve()
    os._exit(0)

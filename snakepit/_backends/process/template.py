"""Warm start: the owner's side of the template process that forks workers (see
:mod:`.child.template_process`).

The template is started when the pool starts and answers once it has imported what workers
import; the first fork waits for that. Anything wrong with it (it cannot start in time, its
adapter module started threads, it died) raises :class:`TemplateUnavailable`, and the backend
starts workers cold from then on: warm start is an optimisation, never a new way to fail.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import msgspec

from snakepit._seam.timing import deadline_after, poll_ms

_BOOTSTRAP = (
    "import sys; sys.path.insert(0, {root!r}); from snakepit._backends.process.child.template_process import main; main()"
)


class TemplateUnavailable(Exception):
    """The template cannot fork workers (any more): start them cold."""


def supported() -> bool:
    """Forking from a template needs pidfds (Linux 5.3) and descriptor passing."""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


def adapter_modules(adapter: Any, preload: Sequence[str] = ()) -> list[str]:
    """The modules to import in the template: that of an adapter named ``"module:Class"`` (one
    travelling by value is unpickled by each worker), and those it will import (``preload``:
    the modules of plain functions)."""
    own = [adapter.partition(":")[0]] if isinstance(adapter, str) else []
    return list(dict.fromkeys([*own, *preload]))


class Template:
    """A running template process and the socket to it; safe to use from any thread."""

    def __init__(
        self, root: str, modules: list[str], sys_path: list[str], cwd: str, env: dict[str, str], timeout: float | None
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP.format(root=root), str(theirs.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
                cwd=cwd,
                close_fds=True,
                process_group=0,  # a Ctrl-C aimed at the owner is the owner's to handle
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.env = env
        self._sock = ours
        self._lock = threading.Lock()  # one request and its answer at a time
        self._deadline = deadline_after(timeout)
        self._hello: list[Any] | None = None
        self._broken: str | None = None
        self._send([modules, sys_path, cwd])

    @property
    def pid(self) -> int:
        return self._process.pid

    def fork(self, worker_id: int, fds: Sequence[int]) -> ForkedProcess:
        """A new worker on these pipe ends: requests, control, responses, events, spill,
        segments socket, stdout, stderr (the caller keeps and closes its own copies)."""
        with self._lock:
            self._wait_hello()
            answer, received = self._ask(["fork", worker_id], fds)
            if answer[0] != "forked" or len(received) != 1:
                for fd in received:
                    os.close(fd)
                raise TemplateUnavailable(f"the template could not fork: {answer[1]}")
            return ForkedProcess(answer[1], received[0], self)

    def reap(self, pid: int) -> int | None:
        """Reap an exited worker; its return code (``-signal`` if killed). None if the template
        is gone: its workers died with it, and their exit status with them."""
        with self._lock:
            try:
                answer, _ = self._ask(["reap", pid])
            except TemplateUnavailable:
                return None
            return answer[2]

    def close(self) -> None:
        """After the pool's workers are reaped: the template ends any left, and exits."""
        with self._lock:
            if not self._broken:
                try:
                    self._send(["exit"])
                except TemplateUnavailable:
                    pass
            self._broken = self._broken or "closed"
            self._sock.close()
        try:
            self._process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    # -- the socket ------------------------------------------------------------------------------

    def _wait_hello(self) -> None:
        if self._hello is not None:
            return
        answer, _ = self._receive(self._deadline, "start")
        _, _pid, threads, _failed, left_open = answer
        if threads > 1:
            self._fail(f"importing the adapter's module started {threads - 1} thread(s), which a fork cannot copy")
        if left_open:
            self._fail(
                f"importing the adapter's module left {len(left_open)} file(s) open ({', '.join(left_open[:3])}), "
                "which forked workers would share"
            )
        self._hello = answer

    def _ask(self, request: list[Any], fds: Sequence[int] = ()) -> tuple[list[Any], list[int]]:
        """Send ``request`` and take its answer. An earlier request whose asker was interrupted
        (a Ctrl-C while it waited) left its answer unread: that one is dropped, not taken for
        this one's."""
        self._send(request, fds)
        while True:
            answer, received = self._receive(None, request[0])
            if _answers(request, answer):
                return answer, received
            for fd in received:
                os.close(fd)

    def _send(self, message: Any, fds: Sequence[int] = ()) -> None:
        if self._broken:
            raise TemplateUnavailable(self._broken)
        try:
            socket.send_fds(self._sock, [msgspec.msgpack.encode(message)], list(fds))
        except OSError as exc:
            self._fail(f"the template is gone ({exc})")

    def _receive(self, deadline: float | None, what: str) -> tuple[list[Any], list[int]]:
        if not _readable(self._sock.fileno(), deadline):
            self._fail(f"the template did not {what} in time")
        try:
            data, fds, _, _ = socket.recv_fds(self._sock, 1 << 16, 1)
        except OSError as exc:
            self._fail(f"the template is gone ({exc})")
        if not data:
            self._fail(f"the template exited (status {self._process.poll()})")
        return msgspec.msgpack.decode(data), fds

    def _fail(self, why: str) -> NoReturn:
        self._broken = why
        try:
            self._process.kill()  # what it forked dies with it
        except OSError:
            pass
        raise TemplateUnavailable(why)


class ForkedProcess:
    """A worker forked by the template: what :class:`subprocess.Popen` is for a cold worker
    (``pid``, ``returncode``, ``wait``), with the template reaping it on the owner's behalf.

    Threads may wait for it at once (the supervisor reaping it, a caller whose call it died
    under): its own pidfd is read and closed under a lock, once. Closed twice, the second close
    would take whatever descriptor had been given that number meanwhile."""

    def __init__(self, pid: int, pidfd: int, template: Template) -> None:
        self.pid = pid
        self.args = ["snakepit worker", str(pid)]
        self.returncode: int | None = None
        self.pidfd = pidfd  # given by the template before anything could reap the pid
        self._own_pidfd = os.dup(pidfd)  # for wait(), whoever closes the connection's; -1 once closed
        self._template = template
        self._lock = threading.Lock()

    def exited(self) -> bool:
        with self._lock:
            return self.returncode is not None or _readable(self._own_pidfd, time.monotonic())

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            if not _readable(self._own_pidfd, deadline_after(timeout)):
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            code = self._template.reap(self.pid)
            # Gone with the template: PR_SET_PDEATHSIG killed it, if nothing else had before.
            self.returncode = -signal.SIGKILL if code is None else code
            self._close_own()
            return self.returncode

    def _close_own(self) -> None:
        fd, self._own_pidfd = self._own_pidfd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self._close_own()
        except (OSError, AttributeError):  # AttributeError: an __init__ that did not finish
            pass


def _answers(request: list[Any], answer: list[Any]) -> bool:
    """``answer`` is the template's answer to ``request``: to a fork for the same worker, or a
    reap of the same pid."""
    if request[0] == "fork":
        return answer[0] in ("forked", "error") and answer[-1] == request[1]
    return answer[0] == "reaped" and answer[1] == request[1]


def _readable(fd: int, deadline: float | None) -> bool:
    """``fd`` became readable before ``deadline`` (monotonic; None: no limit)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        wait_ms = poll_ms(deadline)
        if poller.poll(wait_ms):
            return True
        if wait_ms == 0:
            return False

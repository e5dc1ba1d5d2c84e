"""Inside a worker: the processes its tools start, and the orphans it adopts.

A worker leads its own process group (see the launcher) and is a child subreaper
(``PR_SET_CHILD_SUBREAPER``): a process a tool started whose parent exits -- a daemon's double
fork, ``sh -c "cmd &"`` -- is re-parented to the worker instead of init, so it stays the worker's
descendant and can be ended with it (:func:`end_descendants`).

An adopted orphan that exits becomes the worker's zombie, and no tool will ever wait for it: the
worker reaps those between calls (:func:`reap_orphans`), and only those. Its own children --
what ``subprocess``, ``multiprocessing``, ``pty`` and ``os.fork``/``os.posix_spawn`` return to a
tool -- are the tool's to wait for: reaping one would make the tool's ``Popen.wait()`` report
exit status 0. So their pids are recorded as they are made, by wrapping those functions in the
worker process (and nowhere else). A child made in C code (``os.system`` is fine: it waits
before it returns) by a tool thread still running after its call, and waited for later, is the
one case this cannot tell from an orphan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36

_lock = threading.Lock()  # guards _own and _making; never held across a fork
_own: set[int] = set()  # pids of the children this process made itself
_making = 0  # children being made right now (their pids not recorded yet): no reaping meanwhile
_next_scan = 0.0
_SCAN_EVERY = 5.0  # the full scan (a pass over /proc) runs at most this often
_PRUNE_AT = 256  # recorded pids past which the scan forgets those the tool has reaped


def prctl(option: int, value: int | bytes) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
        except Exception:  # no libc symbol: the fallbacks (pipe end-of-file, process groups) hold
            pass


def name_process(name: str) -> None:
    """What ``ps``, ``top`` and ``psutil.Process.name()`` show (15 bytes at most): a forked
    worker's command line is its template's."""
    prctl(_PR_SET_NAME, name.encode()[:15])


def die_with_parent() -> None:
    """SIGKILL when the owner dies (end-of-file on the control pipe ends us everywhere else)."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def adopt_orphans() -> None:
    """Become a child subreaper, and record the children this process makes from now on:
    through ``os`` (``fork``, ``forkpty``, ``posix_spawn[p]``, and so ``pty``, ``os.spawn*`` and
    multiprocessing's fork start method) and ``_posixsubprocess`` (``subprocess``, and
    multiprocessing's spawn and forkserver start methods)."""
    import _posixsubprocess

    prctl(_PR_SET_CHILD_SUBREAPER, 1)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            setattr(os, name, _recording(getattr(os, name)))
    _posixsubprocess.fork_exec = _recording(_posixsubprocess.fork_exec)
    if getattr(subprocess, "_fork_exec", None) is not None:  # bound when subprocess was imported
        subprocess._fork_exec = _recording(subprocess._fork_exec)  # type: ignore[attr-defined]
    os.register_at_fork(after_in_child=_forget_all)


def _recording(make: Callable[..., Any]) -> Callable[..., Any]:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        global _making
        with _lock:
            _making += 1
        made: Any = 0
        try:
            made = make(*args, **kwargs)
            return made
        finally:
            pid = made[0] if type(made) is tuple else made  # forkpty returns (pid, fd)
            if pid != 0:  # in a forked child, _forget_all has reset everything
                with _lock:
                    _making -= 1
                    if pid > 0:
                        _own.add(pid)

    recorded.__wrapped__ = make  # type: ignore[attr-defined]
    recorded.__name__ = getattr(make, "__name__", "recorded")
    recorded.__doc__ = make.__doc__
    return recorded


def _forget_all() -> None:
    """In a child forked from a worker: none of these are its children; the lock may have been
    held by a thread the child does not have."""
    global _lock, _making
    _lock = threading.Lock()
    _making = 0
    _own.clear()


def reap_orphans() -> None:
    """Reap the zombies of adopted orphans: between two calls, on the thread that runs tools (so
    never while a tool waits for a child of its own). Cheap -- one ``waitid`` -- when there are
    none; a scan of this process's children only when one of its own children is waitable, or
    to forget recorded pids."""
    global _next_scan
    with _lock:
        if _making:
            return
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # no children at all
                _own.clear()
                return
            if found is None:  # nothing has exited
                if len(_own) < _PRUNE_AT:
                    return
                break
            if found.si_pid in _own:  # the tool's to wait for; others may hide behind it
                break
            _reap(found.si_pid)
        now = time.monotonic()
        if now < _next_scan:
            return
        _next_scan = now + _SCAN_EVERY
        import psutil

        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        _own.intersection_update(child.pid for child in children)  # forget what the tool reaped
        for child in children:
            if child.pid not in _own:
                try:
                    if child.status() == psutil.STATUS_ZOMBIE:
                        _reap(child.pid)
                except psutil.Error:
                    pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def end_descendants(grace: float = 1.0) -> None:
    """End every process below this one: SIGTERM, then SIGKILL after ``grace``; reap them."""
    import psutil

    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for process in descendants:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(descendants, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)

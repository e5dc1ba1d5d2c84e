"""After the owner's death: end what its workers' tools left behind (best effort).

While the owner lives, it ends a worker's process group and descendants whenever the worker
ends (see :meth:`ProcessConnection.reap`). When the owner dies, even by SIGKILL, the kernel kills
its workers (``PR_SET_PDEATHSIG``), but not the processes their tools started: those sit in their
worker's process group. So each pool starts a janitor, a tiny ``/bin/sh`` loop reading a pipe
from the owner: ``+ <group>`` when a worker starts, ``- <group>`` when it has been reaped. When
the pipe closes (the owner died) or it reads ``done`` (the pool closed) it kills every group still
listed, and exits. (A process the owner forked holds the pipe open too: after the owner's death
the janitor then acts only once that process has exited as well.) A process that started a session of its own (``setsid``) has left its worker's group and
escapes.

A group is forgotten before its worker is reaped, while its id cannot name anything else; after
the owner's death the janitor acts at once, before the kernel could hand that id to another
group. The janitor ignores terminal signals (and leads its own group), so a Ctrl-C aimed at the
owner does not take it away.
"""

from __future__ import annotations

import os
import subprocess
import threading

_SCRIPT = r"""
trap '' INT HUP TERM QUIT
groups=" "
while read -r op group; do
  case "$op" in
    +) groups="$groups$group " ;;
    -) case "$groups" in *" $group "*) groups="${groups%% $group *} ${groups#* $group }" ;; esac ;;
    done) break ;;
  esac
done
for group in $groups; do kill -9 -"$group" 2>/dev/null; done
"""


class Janitor:
    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None
        self._lock = threading.Lock()  # the pipe is written from any thread, and closed once

    def start(self) -> None:
        """Start the janitor (no janitor where there is no ``/bin/sh``: nothing else changes)."""
        read, write = os.pipe()
        try:
            self._process = subprocess.Popen(
                ["/bin/sh", "-c", _SCRIPT],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                process_group=0,
            )
        except OSError:
            os.close(write)
            return
        finally:
            os.close(read)
        self._pipe = write

    def watch(self, group: int) -> None:
        self._tell(f"+ {group}\n")

    def forget(self, group: int) -> None:
        self._tell(f"- {group}\n")

    def _tell(self, line: str) -> None:
        with self._lock:
            if self._pipe is not None:
                try:
                    os.write(self._pipe, line.encode())
                except OSError:  # it has gone: nothing to do
                    pass

    def stop(self) -> None:
        """The pool is closed and its workers reaped: let the janitor finish, and reap it."""
        self._tell("done\n")  # not only end-of-file: a child the owner forked keeps the pipe open
        with self._lock:
            if self._pipe is not None:
                os.close(self._pipe)
                self._pipe = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

"""Was a worker killed by the kernel's OOM killer? Best effort, from what this machine lets us read.

A SIGKILL looks the same whoever sent it. Two witnesses can tell the OOM killer's apart:

* the kernel log (``/dev/kmsg``, readable with ``CAP_SYSLOG`` where ``dmesg_restrict`` allows):
  the OOM killer logs ``Killed process <pid>``, which names the worker exactly;
* the worker's memory cgroup counts the kills it ordered (``oom_kill`` in cgroup v2's
  ``memory.events`` or v1's ``memory.oom_control``): a kill counted since we last looked is
  attributed to the worker that died of SIGKILL, one kill per death.

When neither is readable the death stays ``killed``.
"""

from __future__ import annotations

import os
import re
import threading

_KILLED = re.compile(rb"(?:Killed process|oom-kill:.*?,pid=)\s*(\d+)")
_LOG_BACKLOG = 4096  # pids remembered from the log, the most recent ones


class OomWitness:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._killed: list[int] = []  # pids the kernel log says the OOM killer killed
        self._counts: dict[str, int] = {}  # cgroup counter file -> kills already accounted for
        self._kmsg = _open_kernel_log()

    def counter_of(self, pid: int) -> str | None:
        """The file counting OOM kills in ``pid``'s memory cgroup (read while it lives), and
        start counting from now."""
        path = _oom_counter_file(pid)
        if path is not None:
            with self._lock:
                if path not in self._counts:
                    self._counts[path] = _read_oom_kills(path) or 0
        return path

    def killed_by_oom(self, pid: int, counter: str | None) -> bool:
        """Whether the SIGKILL that ended ``pid`` came from the OOM killer, as far as one can tell."""
        with self._lock:
            self._read_log()
            if pid in self._killed:
                return True
            if self._kmsg is not None or counter is None:
                return False  # the log names every OOM kill: this was not one
            count = _read_oom_kills(counter)
            if count is None or count <= self._counts.get(counter, 0):
                return False
            self._counts[counter] += 1
            return True

    def close(self) -> None:
        with self._lock:
            if self._kmsg is not None:
                os.close(self._kmsg)
                self._kmsg = None

    def _read_log(self) -> None:
        while self._kmsg is not None:
            try:
                record = os.read(self._kmsg, 8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == 32:  # EPIPE: records were overwritten before we read them
                    continue
                return
            if not record:
                return
            match = _KILLED.search(record)
            if match:
                self._killed.append(int(match.group(1)))
                del self._killed[:-_LOG_BACKLOG]


def _open_kernel_log() -> int | None:
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.lseek(fd, 0, os.SEEK_END)  # only what happens from now on
        os.read(fd, 8192)
    except BlockingIOError:
        pass
    except OSError:
        os.close(fd)
        return None
    return fd


def _oom_counter_file(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            for name in ("memory.events.local", "memory.events"):
                candidate = f"/sys/fs/cgroup{path.rstrip('/')}/{name}"
                if os.path.exists(candidate):
                    return candidate
        elif "memory" in controllers.split(","):  # cgroup v1
            candidate = f"/sys/fs/cgroup/memory{path.rstrip('/')}/memory.oom_control"
            if os.path.exists(candidate):
                return candidate
    return None


def _read_oom_kills(path: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None

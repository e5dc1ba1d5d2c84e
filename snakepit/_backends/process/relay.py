"""Worker output into the owner's :mod:`logging`, without ever holding a worker up.

Workers' stdout and stderr are pipes to the owner, and their ``logging`` records arrive as
messages on the events pipe. The supervisor thread reads all of them as soon as they are
readable (so the pipes never fill while the owner is healthy) and hands complete lines and
records to :class:`LogRelay`, whose own thread emits them on the ``snakepit.worker`` logger,
each with the worker's id. Log handlers can be slow (a network handler, a full disk); if they
fall behind by more than ``capacity`` records, the newest are dropped and counted rather than
stalling the supervisor, and through it, the workers.

stdout lines are logged at INFO, stderr lines at WARNING, records at their own level; every
record carries ``worker_id`` and ``worker_logger`` (the logger name inside the worker) as extras.
"""

from __future__ import annotations

import logging

from snakepit._courier import Courier

worker_log = logging.getLogger("snakepit.worker")

STDOUT_LEVEL = logging.INFO
STDERR_LEVEL = logging.WARNING


class LogRelay:
    def __init__(self, capacity: int = 10_000) -> None:
        self._courier: Courier[tuple[int, int, str, str, str | None]] = Courier(
            "snakepit-log-relay", _log, capacity=capacity, deliver_dropped=_report_dropped
        )

    def emit(self, worker_id: int, level: int, name: str, message: str, correlation_id: str | None = None) -> None:
        if worker_log.isEnabledFor(level):
            self._courier.post(((worker_id, level, name, message, correlation_id),))

    def close(self, timeout: float = 2.0) -> None:
        """Emit what is pending (within ``timeout``), then stop."""
        self._courier.close(timeout)


def _log(line: tuple[int, int, str, str, str | None]) -> None:
    worker_id, level, name, message, correlation_id = line
    worker_log.log(
        level,
        "[worker %d] %s",
        worker_id,
        message,
        extra={"worker_id": worker_id, "worker_logger": name, "correlation_id": correlation_id},
    )


def _report_dropped(count: int) -> None:
    worker_log.warning("%d worker log lines dropped: log handlers were not keeping up", count)


class LineSplitter:
    """Bytes from a pipe into complete lines (the last, partial one waits for the rest)."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[str]:
        data = self._rest + data
        *lines, self._rest = data.split(b"\n")
        if len(self._rest) > 65536:  # a "line" without end: pass it on in pieces
            lines.append(self._rest)
            self._rest = b""
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return [rest.decode("utf-8", "replace")] if rest else []

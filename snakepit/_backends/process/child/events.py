"""The worker's side channel to the supervisor: heartbeat answers and log records.

Anything may write here (the control thread, any thread that logs), so writes take a lock. The
pipe is non-blocking: a worker must never stall because the owner is slow to read its logs, so
a log record that does not fit is dropped (and counted; the count rides on the next record
that gets through). Heartbeat answers are *essential*: they wait briefly for room instead,
since a lost answer would make a healthy worker look hung.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from snakepit import telemetry
from snakepit._protocol import FrameWriter, Log, Telemetry


def plain(value: Any) -> Any:
    """``value`` with whatever msgpack cannot carry as its ``str()``."""
    if isinstance(value, dict):
        return {_utf8(str(key)): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, str):
        return _utf8(value)
    if value is None or isinstance(value, (bool, float, bytes)) or (isinstance(value, int) and -(1 << 63) <= value < (1 << 64)):
        return value
    return str(value)


def _utf8(text: str) -> str:
    """``text`` as msgpack can carry it: a lone surrogate (``os.fsdecode`` makes them) escaped."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


class Events:
    def __init__(self, fd: int, shield: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._lock = threading.Lock()
        self._writer = FrameWriter()
        self._shield = shield  # a frame half-written must not be cut off by a cancel (see the worker)
        self.dropped = 0

    def send(self, message: msgspec.Struct, *, essential: bool = False) -> bool:
        with self._shield(), self._lock:
            frame = self._writer.frame(message)
            view = memoryview(frame)
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                written = 0
            except OSError:  # the owner is gone
                return False
            if written == 0 and not essential:
                self.dropped += 1
                return False
            # A frame is never left half-written: the rest waits for room (briefly, in practice).
            view = view[written:]
            while view:
                select.select([], [self._fd], [], 1.0)
                try:
                    view = view[os.write(self._fd, view) :]
                except BlockingIOError:
                    continue
                except OSError:
                    return False
            return True

    def send_telemetry(self, fields: dict[str, Any]) -> None:
        """A tool's telemetry event; dropped rather than waited for (see :mod:`snakepit.telemetry`)."""
        try:
            self.send(Telemetry(fields))
        except (TypeError, ValueError, OverflowError):  # refused while encoding, before any write
            try:
                self.send(Telemetry(plain(fields)))
            except (TypeError, ValueError, OverflowError):  # still not (a str no UTF-8 holds): dropped, not raised
                pass

    def relay_logging(self, level: int) -> None:
        """Send the worker's :mod:`logging` records at ``level`` and above to the owner."""
        root = logging.getLogger()
        root.handlers[:] = [_RelayHandler(self)]
        root.setLevel(level)


class _RelayHandler(logging.Handler):
    def __init__(self, events: Events) -> None:
        super().__init__()
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            dropped = self._events.dropped
            if dropped:
                message = f"{message} [{dropped} earlier worker log records dropped: the owner was not reading]"
            call = telemetry.current.get()
            correlation_id = None if call is None else call.correlation
            if self._events.send(Log(record.levelno, record.name, message, correlation_id)) and dropped:
                self._events.dropped -= dropped
        except Exception:  # logging must never break the tool
            self.handleError(record)

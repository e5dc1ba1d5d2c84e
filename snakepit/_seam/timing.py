"""Timeouts and deadlines: what a caller may pass, and waits that never overflow.

A timeout is a positive number of seconds, or "no limit": ``None``, ``math.inf``, or any value too
large to be a deadline (``threading.TIMEOUT_MAX`` and beyond, centuries). ``nan``, zero and
negative values are refused. A deadline is a ``time.monotonic()`` instant, or ``None`` for no
limit. Each blocking primitive has its own ceiling (``poll`` takes an int of milliseconds, a lock
at most ``TIMEOUT_MAX`` seconds), so waits are clamped to it and a long deadline is simply waited
for in several rounds.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from snakepit import _errors as errors
from snakepit._errors import Reason

_NO_LIMIT_FROM = threading.TIMEOUT_MAX
_MAX_POLL_MS = (1 << 31) - 1
_MAX_LOCK_WAIT = threading.TIMEOUT_MAX


def check_timeout(name: str, value: Any, reason: str = Reason.INVALID_ARGUMENTS) -> float | None:
    """``value`` as a timeout in seconds, or ``None`` for no limit; a validation error if it is
    not a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.validation(reason, f"{name} must be a number of seconds or None, got {value!r}")
    if value != value or value <= 0:  # nan compares unequal to itself
        raise errors.validation(reason, f"{name} must be a positive number of seconds, got {value!r}")
    return None if value >= _NO_LIMIT_FROM else float(value)


def deadline_after(timeout: float | None, now: float | None = None) -> float | None:
    """The monotonic instant ``timeout`` seconds from ``now``; ``None`` for no limit."""
    if timeout is None:
        return None
    return (time.monotonic() if now is None else now) + timeout


def earliest(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    if second is None:
        return first
    return min(first, second)


def seconds(value: float) -> str:
    """A limit for a message: ``0.5 s``, ``10 s``, ``1.25 s``, ``0.001 s``."""
    text = f"{value:.3f}".rstrip("0").rstrip(".") if value >= 1 else f"{value:.3g}"
    return f"{text} s"


def poll_ms(deadline: float | None) -> int | None:
    """Milliseconds for ``poll`` until ``deadline`` (at least 1 while it has not passed, 0 once
    it has); ``None`` waits without limit."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return 0
    return min(_MAX_POLL_MS, max(1, math.ceil(remaining * 1000)))


def lock_seconds(deadline: float | None) -> float:
    """Seconds for ``Lock.acquire(timeout=...)`` until ``deadline``; ``-1`` waits without limit."""
    if deadline is None:
        return -1
    return min(_MAX_LOCK_WAIT, max(0.0, deadline - time.monotonic()))

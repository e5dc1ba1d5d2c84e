"""The soak's adapters (``python -m benchmarks soak``): importable by name, so workers load them by path.

Every tool answers something the caller can check exactly: a sum, the value it was given, a
token, the numbers ``0..n-1`` in order, a per-session counter with the identity of the worker
process that keeps it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Any

from snakepit import BaseAdapter, StreamChunk, tool


class SoakAdapter(BaseAdapter):
    """One call at a time per worker process (``threads_per_worker=1``)."""

    def initialize(self) -> None:
        # Which worker process this is: a pid may be reused by a later worker, this may not.
        self.incarnation = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.ticks: dict[str, int] = {}
        self.lock = threading.Lock()

    @tool
    def add(self, a: int, b: int) -> int:
        return a + b

    @tool
    def echo(self, value: Any = None) -> Any:
        return value

    @tool
    def nap(self, ms: float, token: int) -> int:
        """Sleeps ``ms`` milliseconds, then answers the caller's own token."""
        time.sleep(ms / 1000.0)
        return token

    @tool
    def square(self, x: int) -> list:
        """``[x, x * x]``: an unordered map can tell which item each result belongs to."""
        return [x, x * x]

    @tool(idempotent=True)
    def square_idempotent(self, x: int) -> list:
        """The same, run again by the pool when its worker dies under it."""
        return [x, x * x]

    @tool
    def count(self, n: int, delay: float = 0.0, final: bool = False):
        """Yields ``0..n-1``, ``delay`` seconds apart; with ``final`` the last one ends the stream
        as a ``StreamChunk(is_final=True)``."""
        for i in range(n):
            if delay:
                time.sleep(delay)
            if final and i == n - 1:
                yield StreamChunk(data=i, is_final=True)
            else:
                yield i

    @tool
    def tick(self, session: str) -> dict:
        """The session's counter in this worker, one more than last time."""
        with self.lock:
            n = self.ticks.get(session, 0) + 1
            self.ticks[session] = n
        return {"session": session, "n": n, "worker": self.incarnation}

    @tool
    def forget(self, session: str) -> bool:
        with self.lock:
            return self.ticks.pop(session, None) is not None


class ThreadedSoakAdapter(SoakAdapter):
    """The same tools, run by several threads of one worker process at once."""

    thread_safe = True

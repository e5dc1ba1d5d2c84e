"""The adapter of the scaling benchmark, importable by name (so the template imports it once and
workers start warm)."""

from __future__ import annotations

import os
import time

from snakepit import BaseAdapter, tool


class Scaling(BaseAdapter):
    thread_safe = True  # for Pool(threads_per_worker=16): its tools keep no state

    @tool
    def echo(self, n: int) -> int:
        return n

    @tool
    def pid(self) -> int:
        return os.getpid()

    @tool
    def started(self) -> float:
        """The wall-clock time this call started running in its worker."""
        return time.time()

    @tool
    def hold(self, fifo: str) -> list[float]:
        """Holds its worker until the owner opens ``fifo`` for writing and closes it; returns the
        wall-clock times it started and ended."""
        began = time.time()
        with open(fifo, "rb") as f:
            f.read()
        return [began, time.time()]

    @tool
    def numbers(self, n: int):
        for i in range(n):
            yield i

    @tool
    def parked(self, seconds: float = 600.0):
        """One chunk, then nothing until the stream is closed. It sleeps in short steps: a cancel
        interrupts a call thread between steps (a thread cannot be woken out of one long sleep)."""
        yield 0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            time.sleep(0.05)

"""Adapters for the thread profile (``threads_per_worker``)."""

from __future__ import annotations

import os
import signal
import threading
import time

from snakepit import BaseAdapter, tool


class Threaded(BaseAdapter):
    thread_safe = True

    def __init__(self, parties: int = 2) -> None:
        self.barrier = threading.Barrier(parties)
        self.lock = threading.Lock()
        self.produced = 0
        self.closed = 0
        self.finished = 0

    @tool
    def meet(self, timeout: float = 20.0) -> dict:
        """Returns only once ``parties`` calls are inside it at the same time."""
        self.barrier.wait(timeout)
        return {"pid": os.getpid(), "thread": threading.get_ident()}

    @tool
    def wait(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @tool
    def pid(self) -> int:
        return os.getpid()

    @tool
    def spin(self, seconds: float = 30.0) -> int:
        """Python code: a cancel stops it at once."""
        deadline = time.monotonic() + seconds
        count = 0
        try:
            while time.monotonic() < deadline:
                count += 1
        finally:
            with self.lock:
                self.finished += 1
        return count

    @tool
    def flood(self, n: int = 100_000, size: int = 0):
        """``n`` chunks: ints, or with ``size`` strings of that many characters."""
        try:
            for i in range(n):
                with self.lock:
                    self.produced += 1
                yield f"{i:0{size}d}" if size else i
        finally:
            with self.lock:
                self.closed += 1

    @tool
    def blobs(self, n: int = 1000, size: int = 1 << 20):
        """Large chunks (they travel in shared memory), counted as they are made."""
        for i in range(n):
            with self.lock:
                self.produced += 1
            yield bytes([i % 256]) * size

    @tool
    def blob(self, i: int, size: int = 1 << 20) -> bytes:
        return bytes([i % 256]) * size

    @tool
    def tagged(self, n: int = 100_000):
        """Every other chunk carries metadata (it travels as a frame of its own)."""
        from snakepit import StreamChunk

        for i in range(n):
            with self.lock:
                self.produced += 1
            yield StreamChunk(i, metadata={"i": i}) if i % 2 else i

    @tool
    def burst_then_die(self, n: int):
        """``n`` chunks as fast as they come (queued, batched), then SIGKILL: nothing flushes."""
        yield from range(n)
        os.kill(os.getpid(), signal.SIGKILL)

    @tool
    def counters(self) -> dict:
        with self.lock:
            return {"produced": self.produced, "closed": self.closed, "finished": self.finished}

    @tool
    def crash(self) -> None:
        os._exit(5)

    @tool
    def c_sleep(self, seconds: int = 60, marker: str = "") -> None:
        """Stuck in C code holding the GIL: neither a cancel nor a signal stops it."""
        from helpers import _stuck_in_c

        _stuck_in_c(seconds, marker)

    @tool
    def segfault(self) -> None:
        import ctypes

        ctypes.string_at(0)

    @tool
    def square(self, x: int) -> int:
        return x * x

    @tool
    def big_ints(self, n: int = 200):
        """Ints msgspec refuses (beyond 64 bits): each chunk is sent again in pickled form."""
        for i in range(n):
            yield 2**70 + i

    @tool(idempotent=True)
    def slow_square_or_die(self, x: int, poison: int = -1) -> int:
        time.sleep(0.05)
        if x == poison:
            os._exit(9)
        return x * x


class Unsafe(BaseAdapter):
    @tool
    def pid(self) -> int:
        return os.getpid()

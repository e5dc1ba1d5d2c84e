"""The showcase adapter: the classic snakepit examples, ready to call.

    from snakepit import Pool
    from snakepit.adapters.showcase import ShowcaseAdapter

    with Pool(ShowcaseAdapter, size=2) as pool:
        pool.execute("add", {"a": 2, "b": 3})                      # 5
        pool.execute_stream("train", {"epochs": 3}, print)          # live training progress
        for rows in pool.stream("dataset", {"rows": 10_000}):      # a large dataset, in chunks
            ...

Every tool here is deterministic (seeded), so the demo and the tests can check what they get.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any

from snakepit._adapter import BaseAdapter, tool
from snakepit._streaming import StreamChunk

__all__ = ["ShowcaseAdapter"]


class ShowcaseAdapter(BaseAdapter):
    """Examples of plain tools, streams, explicit finals, failures and cancellation."""

    def initialize(self) -> None:
        # Stands in for loading a model: done once per worker process, reused by every call.
        self.started_at: float = time.time()
        self.calls: int = 0
        self.cancelled_streams: int = 0

    @tool(description="Answer 'pong' with the worker's pid: a liveness check")
    def ping(self) -> dict[str, Any]:
        self.calls += 1
        return {"pong": True, "pid": os.getpid(), "calls": self.calls}

    @tool(description="Return the value unchanged")
    def echo(self, value: Any = None) -> Any:
        return value

    @tool(description="Add two numbers")
    def add(self, a: float, b: float = 1) -> float:
        return a + b

    @tool(description="Progress events for a job of `steps` steps", supports_streaming=True)
    def progress_stream(self, steps: int = 10, delay: float = 0.05) -> Iterator[dict[str, Any]]:
        for step in range(1, steps + 1):
            if delay:
                time.sleep(delay)
            yield {"type": "progress", "step": step, "total": steps, "percent": round(100 * step / steps, 1)}

    @tool(description="Numbered chunks {number, is_last}: the throughput benchmark's stream", supports_streaming=True)
    def numbered_stream(self, count: int = 10, delay: float = 0.0) -> Iterator[dict[str, Any]]:
        last = count - 1
        for number in range(count):
            if delay:
                time.sleep(delay)
            yield {"number": number, "is_last": number == last}

    @tool(description="StreamChunk items with metadata, ending with an explicit final chunk", supports_streaming=True)
    def chunked_stream(self, parts: int = 3) -> Iterator[StreamChunk]:
        for index in range(parts):
            yield StreamChunk(data={"part": index, "text": f"part {index + 1} of {parts}"}, metadata={"index": index})
        yield StreamChunk(data={"type": "complete", "parts": parts}, is_final=True, metadata={"parts": parts})

    @tool(description="Simulated training: per-epoch loss and accuracy, then a summary", supports_streaming=True)
    def train(
        self, epochs: int = 5, steps_per_epoch: int = 20, learning_rate: float = 0.1, delay: float = 0.01, seed: int = 0
    ) -> Iterator[Any]:
        rng = random.Random(seed)
        loss = 2.5
        best = math.inf
        for epoch in range(1, epochs + 1):
            for _ in range(steps_per_epoch):
                if delay:
                    time.sleep(delay / steps_per_epoch)
                loss *= 1 - learning_rate * rng.uniform(0.02, 0.12)
            best = min(best, loss)
            accuracy = 1 - loss / 2.5 * 0.9
            yield {
                "type": "progress",
                "epoch": epoch,
                "total": epochs,
                "loss": round(loss, 4),
                "accuracy": round(accuracy, 4),
            }
        yield StreamChunk(
            data={"type": "complete", "epochs": epochs, "final_loss": round(loss, 4)},
            is_final=True,
            metadata={"best_loss": round(best, 4)},
        )

    @tool(description="A synthetic dataset of `rows` rows, streamed in chunks of `chunk_size`", supports_streaming=True)
    def dataset(self, rows: int = 100_000, chunk_size: int = 1_000, seed: int = 0) -> Iterator[dict[str, Any]]:
        rng = random.Random(seed)
        sent = 0
        chunk_index = 0
        while sent < rows:
            size = min(chunk_size, rows - sent)
            yield {
                "chunk": chunk_index,
                "ids": list(range(sent, sent + size)),
                "values": [rng.random() for _ in range(size)],
                "labels": [rng.randrange(10) for _ in range(size)],
                "progress": {"rows": sent + size, "total": rows},
            }
            sent += size
            chunk_index += 1

    @tool(description="Raise an error on purpose (to see a tool_exception)")
    def fail(self, message: str = "this tool always fails") -> None:
        raise RuntimeError(message)

    @tool(description="Stream some chunks, then raise", supports_streaming=True)
    def fail_midway(self, after: int = 3) -> Iterator[int]:
        for index in range(after):
            yield index
        raise RuntimeError(f"failed after {after} chunks")

    @tool(description="An endless stream (stop it with HALT, break, or a timeout)", supports_streaming=True)
    def endless(self, delay: float = 0.01) -> Iterator[dict[str, Any]]:
        tick = 0
        try:
            while True:
                if delay:
                    time.sleep(delay)
                yield {"tick": tick}
                tick += 1
        finally:
            self.cancelled_streams += 1

    @tool(description="How many endless streams this worker has closed")
    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "cancelled_streams": self.cancelled_streams, "uptime_s": time.time() - self.started_at}

    @tool(description="Sleep, then return the seconds slept")
    def sleep(self, seconds: float = 1.0) -> float:
        time.sleep(seconds)
        return seconds

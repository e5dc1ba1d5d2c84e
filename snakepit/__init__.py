"""snakepit: long-lived Python worker processes with session affinity and real-time streaming.

    from snakepit import Pool, BaseAdapter, tool

    class Adder(BaseAdapter):
        @tool
        def add(self, a: int, b: int = 1) -> int:
            return a + b

    with Pool(Adder, size=2) as pool:
        pool.execute("add", {"a": 1, "b": 2})   # -> 3
"""

from .adapter import BaseAdapter, ParameterSpec, ToolSpec, tool
from .affinity import Affinity
from .errors import (
    CallCancelled,
    PoolError,
    SnakepitError,
    TimeoutError,
    ToolError,
    ValidationError,
    WorkerError,
)
from .pool import Pool, Session, Stream
from .streaming import HALT, StreamChunk, StreamResult

__version__ = "0.1.0"

__all__ = [
    "Pool",
    "Stream",
    "Session",
    "BaseAdapter",
    "tool",
    "ToolSpec",
    "ParameterSpec",
    "StreamChunk",
    "StreamResult",
    "HALT",
    "Affinity",
    "CallCancelled",
    "SnakepitError",
    "ValidationError",
    "ToolError",
    "WorkerError",
    "TimeoutError",
    "PoolError",
]

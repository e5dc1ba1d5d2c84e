"""snakepit: long-lived Python worker processes with session affinity and real-time streaming.

from snakepit import Pool, BaseAdapter, tool

class Adder(BaseAdapter):
    @tool
    def add(self, a: int, b: int = 1) -> int:
        return a + b

with Pool(Adder, size=2) as pool:
    pool.execute("add", {"a": 1, "b": 2})   # -> 3
"""

from typing import TYPE_CHECKING, Any

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
from .streaming import HALT, StreamChunk, StreamResult

if TYPE_CHECKING:
    from .pool import Pool, Session, Stream

_LAZY = {"Pool", "Session", "Stream"}


def __getattr__(name: str) -> Any:
    """The pool and its companions, imported at first use: a worker process imports this package
    for the adapter API and never needs the pool (threads, asyncio, the supervisor)."""
    if name in _LAZY:
        from . import pool

        value = getattr(pool, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'snakepit' has no attribute {name!r}")


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

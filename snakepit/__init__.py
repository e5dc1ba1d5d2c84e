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

from snakepit._adapter import BaseAdapter, ParameterSpec, ToolSpec, tool
from snakepit._encoding import Encoded
from snakepit._errors import CallCancelled, PoolError, SnakepitError, TimeoutError, ToolError, ValidationError, WorkerError
from snakepit._remote import RemoteTraceback
from snakepit._streaming import HALT, StreamChunk, StreamResult

if TYPE_CHECKING:
    from snakepit._pool import AsyncStream, Pool, Stream
    from snakepit._pool.metrics import MetricsServer, PoolMetrics
    from snakepit._pool.stats import PoolStats, WorkerInfo
    from snakepit._seam.affinity import Affinity
    from snakepit._seam.request import CallRequest
    from snakepit._seam.session import Session, SessionInfo
    from snakepit.executor import Executor

# What only the owner uses, imported at first use: a worker process imports this package for the
# adapter API and never needs the pool (threads, asyncio, the supervisor).
_LAZY = {
    "Pool": "snakepit._pool",
    "Stream": "snakepit._pool",
    "AsyncStream": "snakepit._pool",
    "Session": "snakepit._seam.session",
    "SessionInfo": "snakepit._seam.session",
    "CallRequest": "snakepit._seam.request",
    "PoolStats": "snakepit._pool.stats",
    "WorkerInfo": "snakepit._pool.stats",
    "PoolMetrics": "snakepit._pool.metrics",
    "MetricsServer": "snakepit._pool.metrics",
    "Affinity": "snakepit._seam.affinity",
    "Executor": "snakepit.executor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'snakepit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    value.__module__ = __name__
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "Pool",
    "Executor",
    "Stream",
    "Session",
    "SessionInfo",
    "AsyncStream",
    "CallRequest",
    "PoolStats",
    "WorkerInfo",
    "PoolMetrics",
    "MetricsServer",
    "BaseAdapter",
    "tool",
    "ToolSpec",
    "ParameterSpec",
    "StreamChunk",
    "StreamResult",
    "Encoded",
    "HALT",
    "Affinity",
    "CallCancelled",
    "SnakepitError",
    "ValidationError",
    "ToolError",
    "RemoteTraceback",
    "WorkerError",
    "TimeoutError",
    "PoolError",
]

# Public classes say where users find them (``snakepit.ToolError``, not the private module).
for _public in (
    BaseAdapter,
    ParameterSpec,
    ToolSpec,
    StreamChunk,
    StreamResult,
    Encoded,
    CallCancelled,
    PoolError,
    SnakepitError,
    TimeoutError,
    ToolError,
    RemoteTraceback,
    ValidationError,
    WorkerError,
):
    _public.__module__ = __name__
del _public

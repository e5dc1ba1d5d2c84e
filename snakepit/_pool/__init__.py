"""The pool: the facade users call, and the engine under it (dispatcher, supervisor, exchange,
asyncio drivers, map engine, router)."""

from snakepit._pool.aio import AsyncStream
from snakepit._pool.exchange import Stream
from snakepit._pool.pool import Pool

__all__ = ["Pool", "Stream", "AsyncStream"]

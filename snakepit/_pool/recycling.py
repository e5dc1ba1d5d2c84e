"""When a healthy worker should be replaced anyway: too many requests, too old, too big.

Checked between calls, never inside one: after each call (the worker is about to go back to the
pool) and periodically while a worker is idle. Memory is what the backend's connection measures
(a process's RSS), read only when a memory limit is set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from snakepit._seam.workers import Worker

MAX_REQUESTS = "max_requests"
WORKER_TTL = "worker_ttl"
MEMORY_LIMIT = "memory_limit"
RECYCLE_REASONS = (MAX_REQUESTS, WORKER_TTL, MEMORY_LIMIT)


def served(handle: Worker) -> int:
    """Calls a worker has served: a process's, over all its call slots."""
    if handle.slots:
        return sum(slot.requests_served for slot in handle.slots)
    return handle.requests_served


@dataclass(frozen=True)
class RecyclePolicy:
    max_requests: int | None = None
    worker_ttl: float | None = None
    memory_limit_mb: float | None = None

    @property
    def active(self) -> bool:
        return self.max_requests is not None or self.worker_ttl is not None or self.memory_limit_mb is not None

    def reason(self, handle: Worker) -> str | None:
        """Why ``handle`` is due for recycling now, if it is."""
        if self.max_requests is not None and served(handle) >= self.max_requests:
            return MAX_REQUESTS
        if self.worker_ttl is not None and time.monotonic() - handle.started_monotonic >= self.worker_ttl:
            return WORKER_TTL
        if self.memory_limit_mb is not None:
            rss = handle.conn.memory()
            if rss is not None and rss >= self.memory_limit_mb * 1024 * 1024:
                return MEMORY_LIMIT
        return None

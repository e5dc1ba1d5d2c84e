"""What ``Pool.stats()`` returns: typed dicts, read as the plain dicts they are."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

__all__ = ["PoolStats", "WorkerInfo"]


class WorkerInfo(TypedDict):
    """One worker process, as ``stats()["worker_info"]`` lists it."""

    id: int
    slot: int  # its place in the pool: a replacement takes the same slot (and per-slot worker_env)
    pid: int | None
    node: str | None  # where it runs, when not this machine (Ray: the node's address)
    node_id: str | None  # Ray's id of that node
    state: Literal["starting", "idle", "busy", "draining", "stopping", "dead"]
    requests: int  # calls it has served
    started_at: float  # wall clock
    current_tool: str | None  # what it runs now
    rss: int | None  # its resident memory in bytes, where it can be read
    threads: NotRequired[int]  # with threads_per_worker > 1: its call threads,
    busy_threads: NotRequired[int]  # how many of them run a call,
    current_tools: NotRequired[list[str]]  # and what they run


class PoolStats(TypedDict):
    """Counters since the pool started, and its workers now."""

    requests: int
    errors: int
    queued: int  # calls that had to wait for a worker
    queue_timeouts: int
    timeouts: int
    pool_saturated: int
    restarts: int
    recycled: int
    recycled_by_reason: dict[str, int]
    hung: int
    retries: int
    deaths_by_cause: dict[str, int]
    telemetry_dropped: int  # tools' telemetry events dropped in the owner: listeners slower than the tools
    quarantined: dict[int, float]  # slot -> seconds before its next worker starts
    sessions: int
    size: int
    threads_per_worker: int
    workers: int
    available: int
    busy: int
    waiting: int
    worker_info: list[WorkerInfo]

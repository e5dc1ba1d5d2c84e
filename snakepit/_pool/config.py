"""A pool's configuration: what ``Pool(...)`` was given, checked once, frozen.

Every option is checked here, before anything starts (``invalid_config`` for a value that cannot
work); the backend checks the options
that are its own when it is created (:func:`snakepit._seam.backend.create_backend`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from snakepit import _errors as errors
from snakepit._errors import Reason
from snakepit._seam.affinity import Affinity, parse_affinity
from snakepit._seam.request import positive_int
from snakepit._seam.timing import check_timeout

__all__ = ["AffinityName", "BackendName", "PoolConfig", "StartMethod"]

BackendName = Literal["process", "ray"]
StartMethod = Literal["forkserver", "spawn"]
AffinityName = Literal["hint", "strict_queue", "strict_fail_fast"]
WorkerEnv = Mapping[str, str] | Callable[[int], Mapping[str, str]] | None


def positive(name: str, value: Any, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise errors.validation(Reason.INVALID_CONFIG, f"{name} must be a positive, finite number, got {value!r}")
    return value


def default_size() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class PoolConfig:
    """Checked options of one pool (see :class:`snakepit.Pool` for what each means)."""

    adapter: Any  # a class, a 'module:Class' string, or plain functions (see snakepit._functions)
    size: int
    affinity: Affinity
    adapter_args: Mapping[str, Any] | None
    timeout: float | None
    max_retries: int
    threads_per_worker: int
    max_queue: int
    queue_timeout: float | None
    session_ttl: float
    max_sessions: int
    max_requests: int | None
    worker_ttl: float | None
    memory_limit_mb: float | None
    worker_env: WorkerEnv
    backend: str
    start_method: str | None
    start_timeout: float | None
    cancel_grace: float | None
    kill_grace: float
    shutdown_timeout: float | None
    heartbeat_interval: float
    heartbeat_timeout: float | None
    quarantine_after: int | None
    quarantine_window: float
    on_event: Callable[[dict[str, Any]], None] | None
    ray_address: str | None
    actor_options: Mapping[str, Any] | None

    def __post_init__(self) -> None:
        def checked(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        checked("size", positive_int("size", default_size() if self.size is None else self.size))
        positive_int("max_queue", self.max_queue, minimum=0)
        positive_int("max_sessions", self.max_sessions)
        checked("affinity", parse_affinity(self.affinity, reason=Reason.INVALID_CONFIG))
        checked("timeout", check_timeout("timeout", self.timeout, Reason.INVALID_CONFIG))
        checked("queue_timeout", check_timeout("queue_timeout", self.queue_timeout, Reason.INVALID_CONFIG))
        threads = positive_int("threads_per_worker", self.threads_per_worker)
        adapter = self.adapter
        if threads > 1 and isinstance(adapter, type) and not getattr(adapter, "thread_safe", False):
            raise errors.validation(
                Reason.INVALID_CONFIG,
                f"threads_per_worker={threads} runs calls of one {adapter.__qualname__} instance at once on "
                "several threads, which it does not declare safe: set `thread_safe = True` on the class if it is, "
                "or use threads_per_worker=1",
            )
        positive_int("max_retries", self.max_retries, minimum=0)
        positive_int("max_requests", self.max_requests, allow_none=True)
        positive("worker_ttl", self.worker_ttl, allow_none=True)
        positive("memory_limit_mb", self.memory_limit_mb, allow_none=True)
        positive("session_ttl", self.session_ttl)
        for name in ("start_timeout", "cancel_grace", "shutdown_timeout", "heartbeat_timeout"):
            checked(name, check_timeout(name, getattr(self, name), Reason.INVALID_CONFIG))
        positive("kill_grace", self.kill_grace)
        positive("heartbeat_interval", self.heartbeat_interval)
        positive_int("quarantine_after", self.quarantine_after, allow_none=True)
        positive("quarantine_window", self.quarantine_window)
        if self.on_event is not None and not callable(self.on_event):
            raise errors.validation(Reason.INVALID_CONFIG, "on_event must be callable")

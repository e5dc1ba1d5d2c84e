"""Errors are data: a category, a reason, a message and plain details.

Every failure a caller sees is a :class:`SnakepitError`. The category says which part of the
system refused or failed (``validation``, ``python_error``, ``worker``, ``timeout``, ``pool``); the
reason is the precise, stable machine-readable cause. Errors cross process boundaries (worker to
owner, owner to gRPC client) as plain fields and are rebuilt here, so the same reason reaches the
caller wherever it arose. One subclass per category lets callers catch a family
(``except snakepit.TimeoutError``) without string matching.
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "SnakepitError",
    "ValidationError",
    "ToolError",
    "WorkerError",
    "TimeoutError",
    "PoolError",
    "Category",
    "Reason",
    "CallCancelled",
]


class Category:
    VALIDATION = "validation"
    PYTHON_ERROR = "python_error"
    WORKER = "worker"
    TIMEOUT = "timeout"
    POOL = "pool"


class Reason:
    TOOL_NOT_FOUND = "tool_not_found"
    INVALID_ARGUMENTS = "invalid_arguments"
    NOT_STREAMING = "not_streaming"
    SERIALIZATION_ERROR = "serialization_error"
    INVALID_CONFIG = "invalid_config"
    TOOL_EXCEPTION = "tool_exception"
    WORKER_CRASHED = "worker_crashed"
    WORKER_START_FAILED = "worker_start_failed"
    TIMEOUT = "timeout"
    QUEUE_TIMEOUT = "queue_timeout"
    POOL_SATURATED = "pool_saturated"
    WORKER_BUSY = "worker_busy"
    SESSION_WORKER_UNAVAILABLE = "session_worker_unavailable"
    SESSION_QUOTA_EXCEEDED = "session_quota_exceeded"
    SESSION_NOT_FOUND = "session_not_found"
    POOL_CLOSED = "pool_closed"


class SnakepitError(Exception):
    """A failure with a stable ``category`` and ``reason``.

    ``details`` always holds ``reason``; ``traceback`` is the worker-side traceback text for
    errors raised by tool code, else ``None``.
    """

    category: str = "error"

    def __init__(
        self,
        category: str,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        traceback: str | None = None,
    ) -> None:
        # Not super(): in a class derived from a tool's own exception class (see _remote.py), that
        # would run the tool's class's __init__ with a signature of its own.
        BaseException.__init__(self, message)
        self.category = category
        self.reason: str = reason
        self.message: str = message
        self.details: dict[str, Any] = {**(details or {}), "reason": reason}
        self.traceback: str | None = traceback

    def __str__(self) -> str:
        return f"[{self.category}/{self.reason}] {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(category={self.category!r}, reason={self.reason!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (build_error, (self.category, self.reason, self.message, self.details, self.traceback))

    def to_dict(self) -> dict[str, Any]:
        """The error as plain data, e.g. for logs or a remote client."""
        return {
            "category": self.category,
            "reason": self.reason,
            "message": self.message,
            "details": dict(self.details),
            "traceback": self.traceback,
        }


class ValidationError(SnakepitError, ValueError):
    """The request was refused before any tool code ran, or a value could not be serialized."""


class ToolError(SnakepitError):
    """The tool itself raised; ``details['type']`` and ``traceback`` describe the exception.

    When the tool's exception class is an ``Exception`` the caller has imported, the error is
    also an instance of that class (``except ValueError`` catches it), and attributes it does not
    have itself (``errno``, ``returncode``, ``args``) are the original exception's, when that
    could be pickled. Its ``__cause__`` is a :class:`snakepit.RemoteTraceback`: the worker's
    frames. A pickled copy of such an error is a plain ``ToolError``."""


class WorkerError(SnakepitError):
    """The worker process failed (crashed, or could not start)."""


class TimeoutError(SnakepitError, builtins.TimeoutError):
    """A call ran past its ``timeout`` or waited past ``queue_timeout``."""


class PoolError(SnakepitError):
    """The pool could not take the call (saturated, closed, busy or missing session worker)."""


class CallCancelled(BaseException):
    """Raised inside a running tool, in the worker, when its call is cancelled (timeout, HALT,
    ``break``, ``close()``, a cancelled task). A ``BaseException``, like ``KeyboardInterrupt``, so
    that ``except Exception`` in a tool does not swallow it; let it propagate after cleaning up."""


_BY_CATEGORY: dict[str, type[SnakepitError]] = {
    Category.VALIDATION: ValidationError,
    Category.PYTHON_ERROR: ToolError,
    Category.WORKER: WorkerError,
    Category.TIMEOUT: TimeoutError,
    Category.POOL: PoolError,
}


def build_error(
    category: str,
    reason: str,
    message: str,
    details: dict[str, Any] | None = None,
    traceback: str | None = None,
) -> SnakepitError:
    """Rebuild an error of the right subclass from its fields (wire, pickle, gRPC)."""
    cls = _BY_CATEGORY.get(category, SnakepitError)
    return cls(category, reason, message, details, traceback)


# Constructors for the errors raised in more than one place; each names its reason once.


def validation(reason: str, message: str, **details: Any) -> ValidationError:
    return ValidationError(Category.VALIDATION, reason, message, details)


def pool_error(reason: str, message: str, **details: Any) -> PoolError:
    return PoolError(Category.POOL, reason, message, details)


def pool_closed(draining: bool = False) -> PoolError:
    if draining:  # close(wait=True) is under way: the calls it waits for still run
        return pool_error(Reason.POOL_CLOSED, "the pool is closing (draining its calls): it takes no new ones")
    return pool_error(Reason.POOL_CLOSED, "the pool is not running (not started, or closed)")


def timeout(reason: str, message: str, **details: Any) -> TimeoutError:
    return TimeoutError(Category.TIMEOUT, reason, message, details)


def worker_crashed(worker_id: int, exit_info: dict[str, Any], during: str) -> WorkerError:
    how = exit_info.get("signal") or f"exit code {exit_info.get('exit_code')}"
    return WorkerError(
        Category.WORKER,
        Reason.WORKER_CRASHED,
        f"worker {worker_id} died during {during} ({how})",
        {"worker_id": worker_id, **exit_info},
    )

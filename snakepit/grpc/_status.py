"""Errors on the bridge protocol: which gRPC status each failure gets, and the JSON that lets a
client rebuild the exact :class:`~snakepit.SnakepitError` where one status covers several.

A failure of the tool itself (``python_error``, a worker crash) in ``ExecuteTool`` is an answer,
not a status: ``success=false`` with ``error_message`` the JSON error. Everything else, and any
failure in ``ExecuteStreamingTool``, is a status whose message is the JSON error, also sent in
trailing metadata ``snakepit-error`` (ASCII JSON).
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from snakepit import _errors as errors
from snakepit._errors import Category, Reason
from snakepit.grpc._codec import PickleRefused

ERROR_METADATA = "snakepit-error"

_BY_REASON = {
    Reason.TOOL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.SESSION_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.INVALID_ARGUMENTS: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.SERIALIZATION_ERROR: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_CONFIG: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.NOT_STREAMING: grpc.StatusCode.UNIMPLEMENTED,
    Reason.POOL_SATURATED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.SESSION_QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.WORKER_BUSY: grpc.StatusCode.UNAVAILABLE,
    Reason.SESSION_WORKER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.POOL_CLOSED: grpc.StatusCode.UNAVAILABLE,
    Reason.WORKER_START_FAILED: grpc.StatusCode.UNAVAILABLE,
    Reason.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.QUEUE_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.TOOL_EXCEPTION: grpc.StatusCode.INTERNAL,
    Reason.WORKER_CRASHED: grpc.StatusCode.INTERNAL,
}


def status_of(error: errors.SnakepitError) -> grpc.StatusCode:
    if isinstance(error, PickleRefused):
        return grpc.StatusCode.PERMISSION_DENIED
    return _BY_REASON.get(error.reason, grpc.StatusCode.UNKNOWN)


def is_tool_failure(error: errors.SnakepitError) -> bool:
    """The tool failed (it raised, or its worker died): an answer of ExecuteTool, not a status."""
    return error.category in (Category.PYTHON_ERROR, Category.WORKER) and error.reason != Reason.WORKER_START_FAILED


def error_json(error: errors.SnakepitError) -> str:
    """The error as the JSON a client rebuilds it from (ASCII: fit for metadata)."""
    payload: dict[str, Any] = {
        "category": error.category,
        "reason": error.reason,
        "type": error.details.get("type"),
        "message": error.message,
        "traceback": error.traceback,
        "details": error.details,
    }
    return json.dumps(payload, default=repr)


def error_from_json(text: str) -> errors.SnakepitError:
    payload = json.loads(text)
    return errors.build_error(
        payload["category"], payload["reason"], payload["message"], payload.get("details"), payload.get("traceback")
    )


def unauthenticated() -> errors.SnakepitError:
    return errors.SnakepitError(Category.POOL, "unauthenticated", "missing or wrong bearer token")

"""Errors on the bridge protocol: which gRPC status each failure gets, and the JSON that lets a
client rebuild the exact :class:`~snakepit.SnakepitError` where one status covers several.

A failure of the tool itself (``python_error``, a worker crash) in ``ExecuteTool`` is an answer,
not a status: ``success=false`` with ``error_message`` the JSON error. Everything else, and any
failure in ``ExecuteStreamingTool``, is a status whose message is the JSON error, also sent in
trailing metadata ``snakepit-error`` (ASCII JSON).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import grpc

from snakepit import _errors as errors
from snakepit._errors import Category, Reason
from snakepit._remote import pickled_exception, tool_error
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


def error_json(error: errors.SnakepitError, context: Mapping[str, Any] | None = None, *, accept_pickle: bool = False) -> str:
    """The error as the JSON a client rebuilds it from (ASCII: fit for metadata), in the shape
    Snakepit's clients read (``PythonTranslation`` needs string ``type`` and ``message``):

    * ``type``: the exception's class name when the tool raised (its qualified name stays in
      ``details["type"]``), else the reason's (``WorkerCrashed``, ``PoolSaturated``...);
    * ``message``: the exception's own message when the tool raised, else ours;
      ``snakepit_message`` is always ours (``tool 'fail' raised RuntimeError: boom``);
    * ``stacktrace``: the worker's traceback as a list of lines (``traceback`` as one text);
    * ``context``: the call (``tool_name``, ``session_id``);
    * ``category``, ``reason`` and ``details``: what :func:`error_from_json` rebuilds it from.
    """
    tool_raised = error.reason == Reason.TOOL_EXCEPTION and isinstance(error.details.get("type"), str)
    payload: dict[str, Any] = {
        "type": error.details["type"].rpartition(".")[2] if tool_raised else _camel(error.reason),
        "message": str(error.details.get("message", error.message)) if tool_raised else error.message,
        "snakepit_message": error.message,
        "category": error.category,
        "reason": error.reason,
        "stacktrace": error.traceback.splitlines(keepends=True) if error.traceback else [],
        "traceback": error.traceback,
        "context": dict(context or {}),
        "details": error.details,
    }
    if accept_pickle and tool_raised:  # the tool's exception object itself, for a client that takes pickles
        data = pickled_exception(error)
        if data is not None:
            payload["exception_pickle"] = base64.b64encode(data).decode("ascii")
    return json.dumps(payload, default=repr)


def _camel(reason: str) -> str:
    return "".join(part.capitalize() for part in reason.split("_"))


def error_from_json(text: str) -> errors.SnakepitError:
    payload = json.loads(text)
    return tool_error(
        payload["category"],
        payload["reason"],
        payload.get("snakepit_message", payload["message"]),
        payload.get("details"),
        payload.get("traceback"),
        _exception_pickle(payload),
    )


def _exception_pickle(payload: dict[str, Any]) -> bytes | None:
    data = payload.get("exception_pickle")
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return None


def rpc_error(error: grpc.RpcError) -> errors.SnakepitError:
    """The SnakepitError a failed rpc stands for: rebuilt exactly from the server's JSON, else
    (the server was not reached, or refused the call before it) from its status. grpc's
    traceback is dropped: its frames hold the call (and so grpc's channel and threads) for as
    long as the error -- the new one's ``__context__`` -- is kept."""
    error.__traceback__ = None
    metadata: Any = error.trailing_metadata() or ()  # pairs of key and value
    for key, value in metadata:
        if key == ERROR_METADATA:
            return error_from_json(value)
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.timeout(Reason.TIMEOUT, f"the call exceeded its deadline ({details})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.SnakepitError(Category.POOL, "unauthenticated", details or "missing or wrong token")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        return errors.validation(
            Reason.SERIALIZATION_ERROR, f"a message is larger than max_message_mb allows ({details})", status=code.name
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return errors.pool_error(Reason.POOL_CLOSED, f"the server is not reachable: {details}", status=code.name)
    return errors.SnakepitError(Category.POOL, code.name.lower(), details, {"status": code.name})


def unauthenticated() -> errors.SnakepitError:
    return errors.SnakepitError(Category.POOL, "unauthenticated", "missing or wrong bearer token")

"""Session handles: the call methods, bound to one session, for a Pool or a remote Client."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from snakepit import _errors as errors
from snakepit._errors import Reason
from snakepit._seam.affinity import Affinity
from snakepit._seam.calls import Calls
from snakepit._seam.request import CallRequest
from snakepit._streaming import StreamResult

__all__ = ["Session", "SessionHost", "SessionInfo"]

S = TypeVar("S")
A = TypeVar("A")
S_co = TypeVar("S_co", covariant=True)
A_co = TypeVar("A_co", covariant=True)


@dataclass(frozen=True)
class SessionInfo:
    """A session, as :meth:`Pool.touch_session <snakepit.Pool.touch_session>` describes it."""

    id: str
    worker_id: int | None  # the worker it is pinned to; None before its first call (or on a remote pool)
    created_at: float  # when it was opened, by the wall clock (time.time())
    metadata: Mapping[str, str]  # what was said of it when it was opened


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """A session's metadata: a mapping of str to str, or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"session metadata must be a mapping of str to str, got {metadata!r}")
    return dict(metadata)


class SessionHost(Protocol[S_co, A_co]):
    """What a session's calls go to: a Pool, or a gRPC Client of a served one."""

    def run(self, request: CallRequest) -> Any: ...

    def run_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult: ...

    def open_stream(self, request: CallRequest) -> S_co: ...

    async def arun(self, request: CallRequest) -> Any: ...

    async def arun_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult: ...

    def open_astream(self, request: CallRequest) -> A_co: ...

    def close_session(self, session_id: str) -> bool: ...

    def _session_worker(self, session_id: str) -> int | None: ...


class Session(Calls[S, A]):
    """Calls through a session go to the worker that served the session before.

    Created by :meth:`Pool.session <snakepit.Pool.session>` (or :meth:`snakepit.grpc.Client.session`).
    ``affinity`` (if given there) applies to every call made through the handle unless a call
    names its own; a call may leave ``session_id`` out or repeat the handle's. ``close()`` forgets
    the session and its pin.
    """

    __slots__ = ("pool", "id", "affinity")

    def __init__(self, pool: SessionHost[S, A], session_id: str, affinity: Affinity | None) -> None:
        self.pool: SessionHost[S, A] = pool
        self.id: str = session_id
        self.affinity: Affinity | None = affinity

    def __repr__(self) -> str:
        return f"<snakepit.Session {self.id!r} affinity={self.affinity} worker={self.worker_id}>"

    @property
    def worker_id(self) -> int | None:
        """The worker this session is pinned to, if any (``None`` as well for a remote pool)."""
        return self.pool._session_worker(self.id)

    def _bind(self, request: CallRequest) -> CallRequest:
        """``request`` as a call of this session."""
        if request.session_id is None:
            request = request._replace(session_id=self.id)
        elif request.session_id != self.id:
            raise errors.validation(
                Reason.INVALID_ARGUMENTS,
                f"a call through session {self.id!r} cannot name another session_id ({request.session_id!r})",
            )
        if request.affinity is None and self.affinity is not None:
            request = request._replace(affinity=self.affinity)
        return request

    def run(self, request: CallRequest) -> Any:
        return self.pool.run(self._bind(request))

    def run_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        return self.pool.run_stream(self._bind(request), callback)

    def open_stream(self, request: CallRequest) -> S:
        return self.pool.open_stream(self._bind(request))

    async def arun(self, request: CallRequest) -> Any:
        return await self.pool.arun(self._bind(request))

    async def arun_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        return await self.pool.arun_stream(self._bind(request), callback)

    def open_astream(self, request: CallRequest) -> A:
        return self.pool.open_astream(self._bind(request))

    def close(self) -> None:
        """End the session: its pin is forgotten; a later call with its id starts afresh."""
        self.pool.close_session(self.id)

    def __enter__(self) -> Session[S, A]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

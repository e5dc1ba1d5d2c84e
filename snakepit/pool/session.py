"""Session handles: the pool's call methods, bound to one session."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..affinity import Affinity
from ..streaming import StreamResult
from .request import Caller, CallRequest

if TYPE_CHECKING:
    from .aio import AsyncStream
    from .exchange import Stream


class Session:
    """Calls through a session go to the worker that served the session before.

    Created by :meth:`Pool.session` (or :meth:`snakepit.grpc.Client.session`). ``affinity`` (if
    given there) applies to every call made through the handle unless a call names its own.
    ``close()`` forgets the session and its pin.
    """

    __slots__ = ("pool", "id", "affinity")

    def __init__(self, pool: Caller, session_id: str, affinity: Affinity | None) -> None:
        self.pool = pool
        self.id = session_id
        self.affinity = affinity

    def __repr__(self) -> str:
        return f"<snakepit.Session {self.id!r} affinity={self.affinity} worker={self.worker_id}>"

    @property
    def worker_id(self) -> int | None:
        """The worker this session is pinned to, if any (``None`` as well for a remote pool)."""
        return self.pool._session_worker(self.id)

    def _request(
        self,
        tool: str,
        args: Mapping[str, Any] | None,
        affinity: Affinity | str | None,
        timeout: float | None,
        correlation_id: str | None,
    ) -> CallRequest:
        return CallRequest(tool, args, self.id, affinity or self.affinity, timeout, correlation_id)

    def execute(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> Any:
        return self.pool.run(self._request(tool, args, affinity, timeout, correlation_id))

    def execute_stream(
        self,
        tool: str,
        args: Mapping[str, Any] | None,
        callback: Callable[[Any], Any],
        *,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> StreamResult:
        return self.pool.run_stream(self._request(tool, args, affinity, timeout, correlation_id), callback)

    def stream(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> Stream:
        return self.pool.open_stream(self._request(tool, args, affinity, timeout, correlation_id))  # type: ignore[return-value]

    async def aexecute(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> Any:
        return await self.pool.arun(self._request(tool, args, affinity, timeout, correlation_id))

    async def aexecute_stream(
        self,
        tool: str,
        args: Mapping[str, Any] | None,
        callback: Callable[[Any], Any],
        *,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> StreamResult:
        return await self.pool.arun_stream(self._request(tool, args, affinity, timeout, correlation_id), callback)

    def astream(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> AsyncStream:
        return self.pool.open_astream(self._request(tool, args, affinity, timeout, correlation_id))  # type: ignore[return-value]

    def close(self) -> None:
        """End the session: its pin is forgotten; a later call with its id starts afresh."""
        self.pool._close_session(self.id)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

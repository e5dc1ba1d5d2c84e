"""The six call methods, written once for every front end.

``execute``, ``execute_stream``, ``stream`` and their asyncio twins build a
:class:`~snakepit.CallRequest` and hand it to the request-level method of the same family:
``run``, ``run_stream``, ``open_stream``, ``arun``, ``arun_stream``, ``open_astream``. Those are
what a front end implements: a :class:`~snakepit.Pool` in process, a :class:`snakepit.grpc.Client`
over the wire, a :class:`~snakepit.Session` by binding its id and passing them on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from snakepit._seam.affinity import Affinity
from snakepit._seam.request import CallRequest, map_total, star_items, tool_args
from snakepit._streaming import StreamResult

__all__ = ["Calls", "Starmap"]

S = TypeVar("S")  # what stream() gives: an iterator of chunk data
A = TypeVar("A")  # what astream() gives: an async iterator of chunk data


class Calls(ABC, Generic[S, A]):
    """What every front end offers: the call methods over the request-level ones."""

    __slots__ = ()

    # -- the request-level calls: what a front end implements ------------------------------------

    @abstractmethod
    def run(self, request: CallRequest) -> Any:
        """:meth:`execute` of a prepared request."""

    @abstractmethod
    def run_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        """:meth:`execute_stream` of a prepared request."""

    @abstractmethod
    def open_stream(self, request: CallRequest) -> S:
        """:meth:`stream` of a prepared request."""

    @abstractmethod
    async def arun(self, request: CallRequest) -> Any:
        """:meth:`aexecute` of a prepared request."""

    @abstractmethod
    async def arun_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        """:meth:`aexecute_stream` of a prepared request."""

    @abstractmethod
    def open_astream(self, request: CallRequest) -> A:
        """:meth:`astream` of a prepared request."""

    # -- the call methods ------------------------------------------------------------------------

    def execute(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        encode: str | None = None,
        **tool_kwargs: Any,
    ) -> Any:
        """Run ``tool`` with ``args`` on a worker and return its result.

        The tool's arguments are a dict (``execute("add", {"a": 1})``) or keywords
        (``execute("add", a=1)``), not both; a parameter named like one of the options below
        goes in the dict.

        With a ``session_id`` the call goes to the session's worker as ``affinity`` (or the
        session's, or the pool's mode) says. On a streaming tool, returns the list of every
        chunk's data. ``timeout`` (seconds) covers the time queued and the time running.
        ``correlation_id`` names the call in errors, events, the worker's log records and
        telemetry (one is generated if not given).

        ``encode="json"`` or ``"pickle"`` returns the result (each chunk, for the streaming
        methods) as an :class:`~snakepit.Encoded`, its bytes and their content type, for a
        caller handing values on rather than using them: JSON where JSON carries the value
        exactly, a ``bytes`` value raw, anything else pickled (``"pickle"``) or converted to
        JSON (``"json"``: a tuple becomes a list, a numpy array its ``tolist()``...), or refused
        as ``serialization_error``. The worker encodes it (values of 256 KiB or more encoded,
        and every value on the Ray backend, are encoded by the owner, the same way).

        ``batch=N`` (the streaming methods, with ``encode``) packs the chunks at hand, up to
        ``N``, into each value: a JSON array of them, or under ``"pickle"`` the pickled list
        where JSON does not carry one of them exactly -- what a server forwarding a fast stream
        sends, one message per batch (the gRPC facade's ``chunk_batch``). The worker builds the
        arrays as the tool yields, so the owner hands on one value per batch; a batch never
        waits to fill. A chunk the tool attached metadata to, or marked final, is a batch of
        its own.
        """
        return self.run(CallRequest(tool, tool_args(args, tool_kwargs), session_id, affinity, timeout, correlation_id, encode))

    def execute_stream(
        self,
        tool: str,
        args: Mapping[str, Any] | Callable[[Any], Any] | None = None,
        /,
        callback: Callable[[Any], Any] | None = None,
        *,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        encode: str | None = None,
        batch: int | None = None,
        **tool_kwargs: Any,
    ) -> StreamResult:
        """Stream ``tool``'s chunks into ``callback``, in order, in this thread.

        The callback may return :data:`~snakepit.HALT` to end the stream early; an exception it
        raises ends the stream and propagates unchanged. Either way the tool's generator is
        closed in the worker before that worker takes another call.
        """
        args, on_chunk = _callback_first(args, callback)
        return self.run_stream(
            CallRequest(tool, tool_args(args, tool_kwargs), session_id, affinity, timeout, correlation_id, encode, batch),
            on_chunk,
        )

    def stream(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        encode: str | None = None,
        batch: int | None = None,
        **tool_kwargs: Any,
    ) -> S:
        """An iterator over ``tool``'s chunk data, usable as a context manager.

        Leaving the loop early, ``close()``, or dropping the iterator cancels the tool; its
        ``result`` is the :class:`~snakepit.StreamResult` once the stream has ended.
        """
        return self.open_stream(
            CallRequest(tool, tool_args(args, tool_kwargs), session_id, affinity, timeout, correlation_id, encode, batch)
        )

    async def aexecute(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        encode: str | None = None,
        **tool_kwargs: Any,
    ) -> Any:
        """:meth:`execute` for asyncio: waits through the event loop; cancelling the task
        cancels the call in the worker."""
        return await self.arun(
            CallRequest(tool, tool_args(args, tool_kwargs), session_id, affinity, timeout, correlation_id, encode)
        )

    async def aexecute_stream(
        self,
        tool: str,
        args: Mapping[str, Any] | Callable[[Any], Any] | None = None,
        /,
        callback: Callable[[Any], Any] | None = None,
        *,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        encode: str | None = None,
        batch: int | None = None,
        **tool_kwargs: Any,
    ) -> StreamResult:
        """:meth:`execute_stream` for asyncio; ``callback`` may be a coroutine function."""
        args, on_chunk = _callback_first(args, callback)
        return await self.arun_stream(
            CallRequest(tool, tool_args(args, tool_kwargs), session_id, affinity, timeout, correlation_id, encode, batch),
            on_chunk,
        )

    def astream(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        encode: str | None = None,
        batch: int | None = None,
        **tool_kwargs: Any,
    ) -> A:
        """``async for data in pool.astream(...)``: the call starts at the first iteration (or
        on ``async with``); leaving early, ``aclose()`` or cancelling the task cancels it."""
        return self.open_astream(
            CallRequest(tool, tool_args(args, tool_kwargs), session_id, affinity, timeout, correlation_id, encode, batch)
        )


def _callback_first(args: Any, callback: Any) -> tuple[Any, Any]:
    """``execute_stream(tool, callback, x=1)``: a callable where the args dict goes, and no
    callback, is the callback."""
    if callback is None and callable(args) and not isinstance(args, Mapping):
        return None, args
    return args, callback


class Starmap(ABC):
    """``starmap`` over a front end's ``map``, written once for a Pool and a Client."""

    __slots__ = ()

    map: Callable[..., Iterator[Any]]  # the front end's own, which takes every option of starmap's

    @abstractmethod
    def _parameter_names(self, tool: str) -> list[str]:
        """The tool's parameters, in order (``tool_not_found`` if there is no such tool)."""

    def starmap(
        self,
        tool: str,
        iterable_of_tuples: Iterable[Any],
        /,
        *,
        total: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | Callable[[int, int | None], None] = False,
        chunksize: int | None = None,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> Iterator[Any]:
        """``map`` with each item a tuple of the tool's arguments in the order of its
        parameters, as :func:`itertools.starmap` calls a function. An item that is not a tuple
        (or list), or has too many values, is that item's ``invalid_arguments``."""
        return self.map(
            tool,
            star_items(iterable_of_tuples, tool, self._parameter_names(tool)),
            total=map_total(iterable_of_tuples, total),
            ordered=ordered,
            return_exceptions=return_exceptions,
            progress=progress,
            chunksize=chunksize,
            session_id=session_id,
            affinity=affinity,
            timeout=timeout,
            correlation_id=correlation_id,
        )

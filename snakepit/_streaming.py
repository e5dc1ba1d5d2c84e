"""The values a streaming call produces: chunks, the HALT sentinel and the final result; and
the loops every stream iterator (in process or remote, sync or async) hands to ``for``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol, Self

__all__ = ["StreamChunk", "StreamResult", "HALT"]


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One item of a stream, for a tool that wants to mark the end or attach metadata.

    A tool may yield plain values or ``StreamChunk``s; callers receive ``data`` either way.
    Yielding a chunk with ``is_final=True`` ends the stream: the generator is closed right after.
    """

    data: Any = None
    is_final: bool = False
    metadata: dict[str, Any] | None = None


class _Halt:
    """Return ``HALT`` from an ``execute_stream`` callback to end the stream early and normally."""

    _instance: _Halt | None = None

    def __new__(cls) -> Self:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance  # type: ignore[return-value]  # the one instance: _Halt is final

    def __repr__(self) -> str:
        return "HALT"

    def __reduce__(self) -> str:
        return "HALT"


HALT: Final = _Halt()


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a stream ended.

    ``synthetic_final`` is True when the tool never yielded a ``StreamChunk(is_final=True)``
    (the end was inferred from the generator finishing, or from a halt); ``metadata`` is the
    final chunk's metadata, if it had any; ``correlation_id`` the call's (given or generated).
    """

    chunks: int
    worker_id: int
    execution_time_ms: float
    synthetic_final: bool
    halted: bool = False
    metadata: dict[str, Any] | None = None
    correlation_id: str | None = None


# -- loops ---------------------------------------------------------------------------------------
#
# A `for` loop calls nothing on its iterator when it is left (`break`, `return`, an exception in
# its body), and the stream may still be referenced by the caller: so a stream's __iter__ (and
# __aiter__) is not the stream itself but a one-shot iterator only the loop holds, whose end --
# the moment the loop drops it -- tells the stream, which cancels its call. That may happen in a
# garbage collection (the loop's iterator in a reference cycle), on a thread holding any lock:
# ``_left`` takes none.


class _Leavable(Protocol):
    def __next__(self) -> Any: ...

    def _left(self) -> None: ...


class _AsyncLeavable(Protocol):
    def __anext__(self) -> Awaitable[Any]: ...

    def _left(self) -> None: ...


def loop(stream: _Leavable) -> Iterator[Any]:
    """What a ``for`` loop over ``stream`` iterates: its items, until the loop drops it."""
    take = stream.__next__
    try:
        while True:
            try:
                data = take()
            except StopIteration:
                return
            yield data
    except GeneratorExit:  # the loop was left early
        stream._left()
        raise


class AsyncLoop:
    """What an ``async for`` loop over a stream iterates: its items, until the loop drops it. An
    object rather than an async generator, so that dropping it acts at once (an async generator
    is closed a turn of the event loop later, by its finaliser)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: _AsyncLeavable) -> None:
        self._stream: _AsyncLeavable = stream

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._stream.__anext__()

    def __del__(self) -> None:
        self._stream._left()

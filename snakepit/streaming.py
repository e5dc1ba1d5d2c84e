"""The values a streaming call produces: chunks, the HALT sentinel and the final result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

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

    def __new__(cls) -> _Halt:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

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

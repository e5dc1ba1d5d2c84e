"""A remote subscriber's end of ``StreamTelemetry``: ``client.telemetry(...)`` and
``client.atelemetry(...)`` (see :mod:`._telemetry` for what the server sends).

Each event is a dict::

    {"name": "tool.execution.stop", "parts": ["tool", "execution", "stop"],
     "measurements": {"duration": 1250000, "duration_ms": 1.25}, "metadata": {"tool": "predict", ...},
     "time": 1700000000.0, "correlation_id": "5f3a9c1e-41"}

``control(...)`` changes what the server sends this subscriber from then on.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Self

import grpc

from snakepit import _errors as errors
from snakepit._errors import Reason
from snakepit.grpc import bridge_pb2 as pb
from snakepit.grpc._loop import on_shared_loop
from snakepit.grpc._status import rpc_error
from snakepit.grpc._telemetry import from_message


def controls(
    *,
    enabled: bool | None = None,
    sampling_rate: float | None = None,
    sampled: Sequence[str] = (),
    allow: Sequence[str] | None = None,
    deny: Sequence[str] | None = None,
) -> list[pb.TelemetryControl]:
    """The control messages that say these choices (``None``: unchanged)."""
    messages = []
    if enabled is not None:
        messages.append(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=bool(enabled))))
    if sampling_rate is not None:
        if not isinstance(sampling_rate, (int, float)) or isinstance(sampling_rate, bool) or not 0 <= sampling_rate <= 1:
            raise errors.validation(Reason.INVALID_ARGUMENTS, f"sampling_rate must be within [0, 1], got {sampling_rate!r}")
        update = pb.TelemetrySamplingUpdate(sampling_rate=float(sampling_rate), event_patterns=_patterns("sampled", sampled))
        messages.append(pb.TelemetryControl(sampling=update))
    if allow is not None or deny is not None:
        kept = pb.TelemetryEventFilter(allow=_patterns("allow", allow or ()), deny=_patterns("deny", deny or ()))
        messages.append(pb.TelemetryControl(filter=kept))
    return messages


def _patterns(what: str, patterns: Sequence[str]) -> list[str]:
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"{what} must be a list of fnmatch patterns (str), got {patterns!r}")
    return list(patterns)


class TelemetryStream:
    """``for event in client.telemetry(): ...``: the served pool's events as they happen, until
    ``close()`` (or leaving its ``with`` block); a context manager."""

    def __init__(self, start: Callable[[Iterator[pb.TelemetryControl]], Any], initial: list[pb.TelemetryControl]) -> None:
        self._requests: queue.SimpleQueue[pb.TelemetryControl | None] = queue.SimpleQueue()
        for message in initial:
            self._requests.put(message)
        self._call: Any = start(self._sent())
        self._closed = False

    def _sent(self) -> Iterator[pb.TelemetryControl]:
        while (message := self._requests.get()) is not None:
            yield message

    def control(
        self,
        *,
        enabled: bool | None = None,
        sampling_rate: float | None = None,
        sampled: Sequence[str] = (),
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
    ) -> None:
        """Change what the server sends this subscriber: on or off, the fraction of events kept
        (of those ``sampled`` matches, if given), the fnmatch patterns of names kept and dropped."""
        for message in controls(enabled=enabled, sampling_rate=sampling_rate, sampled=sampled, allow=allow, deny=deny):
            self._requests.put(message)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise StopIteration
        try:
            return from_message(next(self._call))
        except StopIteration:
            self.close()
            raise
        except grpc.RpcError as error:
            if self._closed:
                raise StopIteration from None
            self.close()
            raise rpc_error(error) from None

    def close(self) -> None:
        """Stop receiving; the server lets go of this subscriber."""
        self._closed = True
        self._requests.put(None)
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTelemetryStream:
    """``async for event in client.atelemetry(): ...``, read on the shared gRPC loop."""

    def __init__(self, start: Callable[[AsyncIterator[pb.TelemetryControl]], Any], initial: list[pb.TelemetryControl]) -> None:
        self._start = start
        self._initial = initial
        self._requests: asyncio.Queue[pb.TelemetryControl | None] | None = None  # made on the shared loop
        self._call: Any = None
        self._closed = False

    async def _open(self) -> None:
        requests: asyncio.Queue[pb.TelemetryControl | None] = asyncio.Queue()
        for message in self._initial:
            requests.put_nowait(message)

        async def sent() -> AsyncIterator[pb.TelemetryControl]:
            while (message := await requests.get()) is not None:
                yield message

        self._requests = requests
        self._call = await self._start(sent())

    async def control(
        self,
        *,
        enabled: bool | None = None,
        sampling_rate: float | None = None,
        sampled: Sequence[str] = (),
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
    ) -> None:
        """As :meth:`TelemetryStream.control`."""
        messages = controls(enabled=enabled, sampling_rate=sampling_rate, sampled=sampled, allow=allow, deny=deny)

        async def send() -> None:
            if self._call is None:
                await self._open()
            assert self._requests is not None
            for message in messages:
                self._requests.put_nowait(message)

        await on_shared_loop(send())

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        message = await on_shared_loop(self._read())
        if type(message) is pb.TelemetryEvent:
            return from_message(message)
        closed = self._closed
        await self.aclose()
        if isinstance(message, errors.SnakepitError) and not closed:
            raise message
        raise StopAsyncIteration

    async def _read(self) -> Any:
        """The next event, or EOF, or the call's error -- returned, not raised (see ``_client._read``)."""
        if self._call is None:
            await self._open()
        call: Any = self._call
        try:
            return await call.read()
        except grpc.aio.AioRpcError as error:
            return rpc_error(error)
        except asyncio.CancelledError:
            if self._closed:
                return None
            raise

    async def aclose(self) -> None:
        """Stop receiving; the server lets go of this subscriber."""
        self._closed = True

        async def cancel() -> None:
            if self._requests is not None:
                self._requests.put_nowait(None)
            if self._call is not None:
                self._call.cancel()

        await on_shared_loop(cancel())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

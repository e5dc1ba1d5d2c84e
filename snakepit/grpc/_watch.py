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
from snakepit._streaming import AsyncLoop, loop
from snakepit.grpc import bridge_pb2 as pb
from snakepit.grpc._loop import on_shared_loop, shared_loop
from snakepit.grpc._status import rpc_error
from snakepit.grpc._telemetry import Controls, from_message


def controls(
    *,
    enabled: bool | None = None,
    sampling_rate: float | None = None,
    sampled: Sequence[str] = (),
    allow: Sequence[str] | None = None,
    deny: Sequence[str] | None = None,
) -> list[pb.TelemetryControl]:
    """The control messages that say these choices (``None``: not said). A filter message
    carries both lists: give both (:class:`_Choices` keeps the other one)."""
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


class _Choices:
    """What a subscriber has asked for so far: a change of ``allow`` keeps ``deny``, and back."""

    def __init__(self, enabled: bool, sampling_rate: float, allow: Sequence[str], deny: Sequence[str]) -> None:
        self.allow: Sequence[str] = _patterns("allow", allow)
        self.deny: Sequence[str] = _patterns("deny", deny)
        # The same filter, applied here too: the server starts sending as the stream opens, and
        # applies a control when it arrives, so events it sent meanwhile may not be wanted.
        self.filter = Controls()
        self.filter.set_filter(self.allow, self.deny)
        self.initial = controls(
            enabled=None if enabled else False,
            sampling_rate=None if sampling_rate == 1.0 else sampling_rate,
            allow=self.allow or None,
            deny=self.deny or None,
        )
        self.closed = False

    def change(
        self,
        enabled: bool | None,
        sampling_rate: float | None,
        sampled: Sequence[str],
        allow: Sequence[str] | None,
        deny: Sequence[str] | None,
    ) -> list[pb.TelemetryControl]:
        if self.closed:
            raise errors.pool_error(Reason.POOL_CLOSED, "this telemetry stream is closed")
        filtering = allow is not None or deny is not None
        messages = controls(
            enabled=enabled,
            sampling_rate=sampling_rate,
            sampled=sampled,
            allow=(self.allow if allow is None else allow) if filtering else None,
            deny=(self.deny if deny is None else deny) if filtering else None,
        )
        if filtering:
            self.allow = self.allow if allow is None else list(allow)
            self.deny = self.deny if deny is None else list(deny)
            self.filter.set_filter(self.allow, self.deny)
        return messages


def _drain(requests: queue.SimpleQueue[pb.TelemetryControl | None]) -> Iterator[pb.TelemetryControl]:
    """The control messages as grpc's sending thread reads them, until ``None`` (it holds the
    queue alone, not the stream: a stream dropped unclosed is still collected, and ends this)."""
    while (message := requests.get()) is not None:
        yield message


class TelemetryStream:
    """``for event in client.telemetry(): ...``: the served pool's events as they happen, until
    ``close()``, leaving its ``with`` block, or leaving a ``for`` loop over it early."""

    def __init__(self, start: Callable[[Iterator[pb.TelemetryControl]], Any], choices: _Choices) -> None:
        self._choices = choices
        self._requests: queue.SimpleQueue[pb.TelemetryControl | None] = queue.SimpleQueue()
        for message in choices.initial:
            self._requests.put(message)
        self._call: Any = start(_drain(self._requests))

    def control(
        self,
        *,
        enabled: bool | None = None,
        sampling_rate: float | None = None,
        sampled: Sequence[str] = (),
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
    ) -> None:
        """Change what the server sends this subscriber from now on (``None``: unchanged): on or
        off, the fraction of events kept (of those ``sampled`` matches, if given), the fnmatch
        patterns of names kept and dropped (deny first)."""
        for message in self._choices.change(enabled, sampling_rate, sampled, allow, deny):
            self._requests.put(message)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return loop(self)

    def __next__(self) -> dict[str, Any]:
        if self._choices.closed:
            raise StopIteration
        try:
            while True:
                event = from_message(next(self._call))
                if self._choices.filter.admits(event["name"]):
                    return event
        except StopIteration:
            self.close()
            raise
        except grpc.RpcError as error:
            if self._choices.closed:
                raise StopIteration from None
            self.close()
            raise rpc_error(error) from None

    def _left(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving; the server lets go of this subscriber."""
        self._choices.closed = True
        self._requests.put(None)
        self._call.cancel()

    def __del__(self) -> None:
        # Dropped unclosed: grpc cancels its call as it is collected; this ends its sending
        # thread (a queue's put is safe here, whatever the collection interrupted).
        self._requests.put(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTelemetryStream:
    """``async for event in client.atelemetry(): ...``, read on the shared gRPC loop. The
    subscription starts at once; leaving an ``async for`` loop early ends it."""

    def __init__(self, start: Callable[[AsyncIterator[pb.TelemetryControl]], Any], choices: _Choices) -> None:
        self._choices = choices
        self._requests: asyncio.Queue[pb.TelemetryControl | None] | None = None  # made on the shared loop
        self._call: Any = None
        self._opened = asyncio.run_coroutine_threadsafe(self._open(start), shared_loop())

    async def _open(self, start: Callable[[AsyncIterator[pb.TelemetryControl]], Any]) -> None:
        requests: asyncio.Queue[pb.TelemetryControl | None] = asyncio.Queue()
        for message in self._choices.initial:
            requests.put_nowait(message)

        async def sent() -> AsyncIterator[pb.TelemetryControl]:
            while (message := await requests.get()) is not None:
                yield message

        self._requests = requests
        self._call = await start(sent())

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
        messages = self._choices.change(enabled, sampling_rate, sampled, allow, deny)

        async def send() -> None:
            await asyncio.wrap_future(self._opened)
            assert self._requests is not None
            for message in messages:
                self._requests.put_nowait(message)

        await on_shared_loop(send())

    def __aiter__(self) -> AsyncLoop:
        return AsyncLoop(self)

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._choices.closed:
                raise StopAsyncIteration
            try:
                message = await on_shared_loop(self._read())
            except asyncio.CancelledError:  # the caller's task was cancelled: so is the subscription
                self._left()
                raise
            if type(message) is not pb.TelemetryEvent:
                break
            event = from_message(message)
            if self._choices.filter.admits(event["name"]):  # see _Choices.filter
                return event
        closed = self._choices.closed
        await self.aclose()
        if isinstance(message, errors.SnakepitError) and not closed:
            raise message
        raise StopAsyncIteration

    async def _read(self) -> Any:
        """The next event, or EOF, or the call's error -- returned, not raised (see ``_client._read``)."""
        await asyncio.wrap_future(self._opened)
        call: Any = self._call
        try:
            return await call.read()
        except grpc.aio.AioRpcError as error:
            return rpc_error(error)

    async def aclose(self) -> None:
        """Stop receiving; the server lets go of this subscriber."""
        self._choices.closed = True
        await on_shared_loop(self._cancel())

    async def _cancel(self) -> None:
        if not self._opened.done():
            await asyncio.wrap_future(self._opened)
        if self._requests is not None:
            self._requests.put_nowait(None)
        if self._call is not None:
            self._call.cancel()

    def _left(self) -> None:
        """A loop over it was left (maybe in a collection): cancelled, without waiting."""
        self._choices.closed = True
        try:
            shared_loop().call_soon_threadsafe(lambda: asyncio.ensure_future(self._cancel()))
        except RuntimeError:  # the loop is closed: so is the call
            pass

    def __del__(self) -> None:
        if not self._choices.closed:
            self._left()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

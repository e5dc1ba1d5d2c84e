"""A Python client for a served pool: the pool's call methods, over gRPC.

Code written against a :class:`~snakepit.Pool` runs against a :class:`Client`: ``execute``,
``execute_stream``, ``stream``, ``tools``, ``session(...)`` and the async twins, with the same
signatures, return values and errors (the same ``SnakepitError`` category and reason, rebuilt from
the JSON the server sends). Values round-trip exactly: the client asks for pickled results
(``accept: pickle``; it trusts its server), and sends an argument JSON cannot carry exactly as a
pickled binary parameter -- which the server accepts only if it was started with
``allow_pickle=True`` (else ``serialization_error``).

The async methods run on the process's shared gRPC loop thread (:mod:`.loop`), like every server
of the process, and are awaited from any event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import grpc
import msgspec

from snakepit import _errors as errors
from snakepit._adapter import ParameterSpec, ToolSpec
from snakepit._encoding import Encoded, check_batch, check_encoding
from snakepit._errors import Reason
from snakepit._seam.affinity import Affinity, parse_affinity
from snakepit._seam.calls import Calls, Starmap
from snakepit._seam.request import (
    CallRequest,
    check_callback,
    check_correlation_id,
    check_routing,
    check_session_id,
    did_you_mean,
    map_items,
    map_total,
    positive_int,
)
from snakepit._seam.session import Session, SessionInfo, check_metadata
from snakepit._seam.timing import check_timeout
from snakepit._streaming import HALT, AsyncLoop, StreamResult, loop
from snakepit.grpc import _codec as codec
from snakepit.grpc import _map, bridge_pb2_grpc
from snakepit.grpc import bridge_pb2 as pb
from snakepit.grpc._descriptors import Any as AnyMessage
from snakepit.grpc._loop import on_shared_loop, shared_loop
from snakepit.grpc._status import error_from_json, rpc_error
from snakepit.grpc._watch import AsyncTelemetryStream, TelemetryStream, _Choices
from snakepit.progress import Reporter

_MARGIN = 2.0  # the gRPC deadline trails the call's timeout, so the server's timeout error arrives first


@dataclass(frozen=True)
class ClientTLS:
    """PEM files: the CA that signed the server's certificate (``None``: the system's roots), and
    the client's own certificate and key when the server wants mutual TLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as file:
                return file.read()

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


class Client(Calls["RemoteStream", "AsyncRemoteStream"], Starmap):
    """A connection to a served pool (``pool.serve(...)``, ``snakepit serve``): the call methods
    of a :class:`~snakepit.Pool`, with the same arguments, results and errors."""

    def __init__(
        self, address: str, *, token: str | None = None, tls: ClientTLS | None = None, max_message_mb: float = 100
    ) -> None:
        """``max_message_mb`` bounds a message either way, as the server's option of that name
        does (grpc's own client default, 4 MiB, would refuse results the server sends)."""
        limit = codec.message_limit(max_message_mb)
        self.address: str = address
        self._token: str | None = token
        self._tls: ClientTLS | None = tls
        self._options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        self._channel = (
            grpc.secure_channel(address, tls.credentials(), self._options)
            if tls
            else grpc.insecure_channel(address, self._options)
        )
        self._stub = bridge_pb2_grpc.BridgeServiceStub(self._channel)
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._aio: tuple[Any, Any] | None = None  # (channel, stub) on the shared loop
        self._closed: bool = False
        self._pool_shape: tuple[frozenset[str], int | None] | None = None  # its tools and capacity, once asked

    def __repr__(self) -> str:
        return f"<snakepit.grpc.Client {self.address}{' closed' if self._closed else ''}>"

    def close(self) -> None:
        """Close the connection; calls made after it fail with ``pool_closed``."""
        self._closed = True
        self._channel.close()
        if self._aio is not None:
            channel, self._aio = self._aio[0], None
            asyncio.run_coroutine_threadsafe(channel.close(), shared_loop()).result(5)

    def _check_open(self) -> None:
        if self._closed:
            raise errors.pool_error(Reason.POOL_CLOSED, f"this client of {self.address} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------

    # The request-level calls (see snakepit._seam.request): what a Session calls, as on a Pool.

    def run(self, request: CallRequest) -> Any:
        message, metadata, deadline = self._request(request, False)
        try:
            response = self._stub.ExecuteTool(message, metadata=metadata, timeout=deadline)
        except grpc.RpcError as error:
            raise (failure := rpc_error(error)) from failure.__cause__
        return _result(response, request.encode)

    def run_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        check_callback(callback)
        with self.open_stream(request) as stream:
            for data in stream:
                if callback(data) is HALT:
                    stream.halt()
                    break
        assert stream.result is not None
        return stream.result

    def open_stream(self, request: CallRequest) -> RemoteStream:
        message, metadata, deadline = self._request(request, True)
        return RemoteStream(self._stub.ExecuteStreamingTool(message, metadata=metadata, timeout=deadline), request.encode)

    def _served(self) -> tuple[frozenset[str], int | None]:
        """The served pool's tools and how many calls it runs at once (asked once: a pool's
        adapter and size never change)."""
        if self._pool_shape is None:
            self.tools()
        assert self._pool_shape is not None
        return self._pool_shape

    def tools(self) -> list[ToolSpec]:
        self._check_open()
        try:
            response, call = self._stub.InitializeSession.with_call(pb.InitializeSessionRequest(), metadata=self._auth)
        except grpc.RpcError as error:
            raise (failure := rpc_error(error)) from failure.__cause__
        capacity = dict(call.trailing_metadata() or ()).get(codec.CAPACITY, "")
        tools = [_tool_spec(spec) for spec in response.available_tools.values()]
        self._pool_shape = (frozenset(spec.name for spec in tools), int(capacity) if capacity.isdigit() else None)
        return tools

    def session(
        self, session_id: str, *, affinity: Affinity | str | None = None, metadata: Mapping[str, str] | None = None
    ) -> Session[RemoteStream, AsyncRemoteStream]:
        """A handle whose calls all carry ``session_id``; opens the session on the server now,
        with ``metadata`` (str to str) kept there."""
        check_session_id(session_id)
        mode = None if affinity is None else parse_affinity(affinity)
        request = pb.InitializeSessionRequest(session_id=session_id, metadata=check_metadata(metadata) or {})
        self._check_open()
        try:
            self._stub.InitializeSession(request, metadata=self._auth)
        except grpc.RpcError as error:
            raise (failure := rpc_error(error)) from failure.__cause__
        return Session(self, session_id, mode)

    def touch_session(self, session_id: str) -> SessionInfo | None:
        """Keep a session alive on the server and describe it (``worker_id`` is ``None``: the
        server does not say); ``None`` if it has no such session."""
        check_session_id(session_id)
        self._check_open()
        try:
            response = self._stub.GetSession(pb.GetSessionRequest(session_id=session_id), metadata=self._auth)
        except grpc.RpcError as error:
            failure = rpc_error(error)
            if failure.reason == Reason.SESSION_NOT_FOUND:
                return None
            raise failure from None
        return SessionInfo(session_id, None, response.created_at.ToNanoseconds() / 1e9, dict(response.metadata))

    def _session_worker(self, session_id: str) -> int | None:
        return None  # the server does not say which worker a session is pinned to

    def close_session(self, session_id: str) -> bool:
        """Forget a session and its pin on the server; whether there was one."""
        check_session_id(session_id)
        self._check_open()
        try:
            response = self._stub.CleanupSession(pb.CleanupSessionRequest(session_id=session_id), metadata=self._auth)
        except grpc.RpcError as error:
            raise (failure := rpc_error(error)) from failure.__cause__
        return bool(response.resources_cleaned)

    # -- map -------------------------------------------------------------------------------------

    def map(
        self,
        tool: str,
        iterable_of_args: Iterable[Any],
        /,
        *,
        param: str | None = None,
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
        """:meth:`Pool.map <snakepit.Pool.map>` on the served pool: each item an ``ExecuteTool``
        call, pipelined (see :mod:`._map`). ``chunksize`` is how many calls are in flight at
        once (by default as many as the served pool runs at once); ``timeout`` bounds each call."""
        items, window, build = self._map_setup(
            tool,
            iterable_of_args,
            param,
            total,
            ordered,
            return_exceptions,
            progress,
            chunksize,
            session_id,
            affinity,
            timeout,
            correlation_id,
        )

        def start(args: Any) -> Any:
            message, metadata, deadline = build(args)
            return self._stub.ExecuteTool.future(message, metadata=metadata, timeout=deadline)

        def settle(call: Any) -> Any:
            try:
                response = call.result()
            except grpc.RpcError as error:
                raise (failure := rpc_error(error)) from failure.__cause__
            return _result(response)

        return _map.run_map(items, start, settle, window)

    def _parameter_names(self, tool: str) -> list[str]:
        specs = {spec.name: spec for spec in self.tools()}
        _check_tool(tool, specs)
        return [parameter.name for parameter in specs[tool].parameters]

    def amap(
        self,
        tool: str,
        iterable_of_args: Iterable[Any],
        /,
        *,
        param: str | None = None,
        total: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | Callable[[int, int | None], None] = False,
        chunksize: int | None = None,
        session_id: str | None = None,
        affinity: Affinity | str | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> AsyncIterator[Any]:
        """:meth:`map` for asyncio: ``async for result in client.amap(...)``."""
        items, window, build = self._map_setup(
            tool,
            iterable_of_args,
            param,
            total,
            ordered,
            return_exceptions,
            progress,
            chunksize,
            session_id,
            affinity,
            timeout,
            correlation_id,
        )

        def start(args: Any) -> Any:
            message, metadata, deadline = build(args)

            async def call() -> Any:
                _, stub = await self._async_stub()
                try:
                    return await stub.ExecuteTool(message, metadata=metadata, timeout=deadline)
                except grpc.aio.AioRpcError as error:
                    raise (failure := rpc_error(error)) from failure.__cause__

            async def run() -> Any:  # the call is made only if this runs (a task cancelled first makes none)
                return await on_shared_loop(call())

            return run()

        return _map.arun_map(items, start, lambda task: _result(task.result()), window)

    def _map_setup(
        self,
        tool: str,
        iterable_of_args: Any,
        param: str | None,
        total: int | None,
        ordered: bool,
        return_exceptions: bool,
        progress: Any,
        chunksize: int | None,
        session_id: str | None,
        affinity: Affinity | str | None,
        timeout: float | None,
        correlation_id: str | None,
    ) -> tuple[Iterable[Any], _map.Window, Callable[[Any], Any]]:
        """The map's items (args dicts), its window, and what builds an item's request (checked
        as the pool checks a call: the map's own options here, at once; each item's args as it
        is read)."""
        self._check_open()
        positive_int("chunksize", chunksize, allow_none=True, reason=Reason.INVALID_ARGUMENTS)
        check_routing(session_id, affinity)
        check_timeout("timeout", timeout)
        if correlation_id is None:
            correlation_id = f"{secrets.token_hex(4)}-map"  # the map's one id, as the pool gives one
        else:
            check_correlation_id(correlation_id)
        total = map_total(iterable_of_args, total)
        items = map_items(iterable_of_args, param)
        names, capacity = self._served()
        _check_tool(tool, names)
        # As many calls in flight as the pool runs at once: none waits in its queue, where it
        # would spend its timeout (and queue_timeout) as no item of a local map does.
        limit = chunksize or capacity or _map.WINDOW
        window = _map.Window(ordered, return_exceptions, Reporter(progress, total, description=tool), limit)

        def build(args: Any) -> Any:
            return self._request(CallRequest(tool, args, session_id, affinity, timeout, correlation_id), False)

        return items, window, build

    # -- telemetry -------------------------------------------------------------------------------

    def telemetry(
        self,
        *,
        enabled: bool = True,
        sampling_rate: float = 1.0,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
    ) -> TelemetryStream:
        """The served pool's events as they happen (``StreamTelemetry``): an iterator of dicts,
        and a context manager; ``.control(...)`` changes the choices made here. ``allow`` and
        ``deny`` are fnmatch patterns of dotted names (``tool.execution.*``), deny first;
        ``sampling_rate`` the fraction of events kept."""
        choices = _Choices(enabled, sampling_rate, allow, deny)
        self._check_open()
        return TelemetryStream(lambda requests: self._stub.StreamTelemetry(requests, metadata=self._auth), choices)

    def atelemetry(
        self,
        *,
        enabled: bool = True,
        sampling_rate: float = 1.0,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
    ) -> AsyncTelemetryStream:
        """:meth:`telemetry` for ``async for``; ``await stream.control(...)``."""
        choices = _Choices(enabled, sampling_rate, allow, deny)
        self._check_open()

        async def start(requests: Any) -> Any:
            _, stub = await self._async_stub()
            return stub.StreamTelemetry(requests, metadata=self._auth)

        return AsyncTelemetryStream(start, choices)

    # -- asyncio ---------------------------------------------------------------------------------

    async def arun(self, request: CallRequest) -> Any:
        message, metadata, deadline = self._request(request, False)

        async def call() -> Any:
            _, stub = await self._async_stub()
            try:
                return await stub.ExecuteTool(message, metadata=metadata, timeout=deadline)
            except grpc.aio.AioRpcError as error:
                raise (failure := rpc_error(error)) from failure.__cause__

        return _result(await on_shared_loop(call()), request.encode)

    async def arun_stream(self, request: CallRequest, callback: Callable[[Any], Any]) -> StreamResult:
        import inspect

        check_callback(callback)
        stream = self.open_astream(request)
        try:
            async for data in stream:
                outcome = callback(data)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
                if outcome is HALT:
                    await stream.ahalt()
                    break
        finally:
            await stream.aclose()
        assert stream.result is not None
        return stream.result

    def open_astream(self, request: CallRequest) -> AsyncRemoteStream:
        message, metadata, deadline = self._request(request, True)

        async def start() -> Any:
            _, stub = await self._async_stub()
            return stub.ExecuteStreamingTool(message, metadata=metadata, timeout=deadline)

        return AsyncRemoteStream(start, request.encode)

    async def _async_stub(self) -> tuple[Any, Any]:
        """The aio channel and stub, made on (and used only from) the shared loop."""
        self._check_open()
        if self._aio is None:
            credentials = self._tls.credentials() if self._tls else None
            channel = (
                grpc.aio.secure_channel(self.address, credentials, self._options)
                if credentials
                else grpc.aio.insecure_channel(self.address, self._options)
            )
            self._aio = (channel, bridge_pb2_grpc.BridgeServiceStub(channel))
        return self._aio

    # -- requests --------------------------------------------------------------------------------

    def _request(
        self, call: CallRequest, stream: bool
    ) -> tuple[pb.ExecuteToolRequest, tuple[tuple[str, str], ...], float | None]:
        """The rpc's request, metadata and deadline; the call is checked as the pool checks it."""
        self._check_open()
        tool, args, session_id, affinity, timeout, correlation_id, encode, batch = call
        if isinstance(args, errors.SnakepitError):  # a map's item refused already (see starmap)
            raise args
        mode = check_routing(session_id, affinity)
        limit = check_timeout("timeout", timeout)
        if args is not None and not isinstance(args, Mapping):
            raise errors.validation(Reason.INVALID_ARGUMENTS, f"args must be a dict, got {type(args).__name__}", tool=tool)
        request = pb.ExecuteToolRequest(tool_name=tool, session_id=session_id or "", stream=stream)
        options = request.metadata  # the call's options travel in the request (only the token is a header)
        if check_encoding(encode) != "json":  # encode="json": what JSON cannot carry is converted
            options["accept"] = "pickle"
        if (batch := check_batch(batch, encode, stream)) is not None:  # the server packs its messages so
            options["chunk_batch"] = str(batch)
        if correlation_id is not None:
            check_correlation_id(correlation_id)
            options["correlation_id"] = correlation_id
        for name, value in (args or {}).items():
            if type(name) is not str:
                raise errors.validation(Reason.INVALID_ARGUMENTS, f"argument names must be str, got {name!r}", tool=tool)
            kind = type(value).__name__
            if type(value) is bytes:
                request.binary_parameters[name] = value
                request.parameters[name].type_url = f"{codec.TYPE_PREFIX}{kind}.binary"
                continue
            text = _json_or_none(value)
            if text is not None:
                request.parameters[name].CopyFrom(AnyMessage(type_url=codec.TYPE_PREFIX + kind, value=text))
                continue
            try:
                request.binary_parameters[name] = pickle.dumps(value, protocol=5)
            except RecursionError:
                raise codec.too_deep(f"argument {name!r}") from None
            except Exception as exc:
                raise errors.validation(
                    Reason.SERIALIZATION_ERROR, f"cannot serialize argument {name!r} of type {kind}: {exc}", type=kind
                ) from None
            request.parameters[name].type_url = f"{codec.TYPE_PREFIX}{kind}.binary"
            options[f"binary_format:{name}"] = "pickle"
        if mode is not None:
            options["affinity"] = mode.value
        deadline = None
        if limit is not None:
            options["timeout_ms"] = str(max(1, int(limit * 1000)))
            deadline = limit + _MARGIN
        return request, self._auth, deadline


def _json_or_none(value: Any) -> bytes | None:
    """``value`` as JSON if JSON carries it exactly (not, say, a str with a lone surrogate, or
    a value nested too deep to check: pickle then decides)."""
    if not codec.exact_json(value):
        return None
    try:
        return codec.encode_json(value)
    except (UnicodeEncodeError, RecursionError):
        return None


class _Remote:
    """What both remote streams keep: the call, what it delivered, and how it ended."""

    def __init__(self, encode: str | None = None) -> None:
        self._encode: str | None = encode  # the call's encode option: chunks are delivered as the server sent them
        self._chunks: int = 0
        self._halted: bool = False
        self.result: StreamResult | None = None  # how it ended: None until its final chunk, as in process
        self.metadata: dict[str, Any] | None = None  # what the tool attached to the chunk delivered last

    def _take(self, chunk: pb.ToolChunk) -> Any:
        """A chunk's value, or ``_END`` after a synthetic final chunk."""
        meta = chunk.metadata
        attached = codec.attached_metadata(meta) if meta else None
        if chunk.is_final:
            self.result = _stream_result(meta, attached, self._chunks, self._halted)
            if self.result.synthetic_final:
                return _END
            self.result = dataclasses.replace(self.result, chunks=self._chunks + 1)
        self._chunks += 1
        self.metadata = attached
        if self._encode is not None:
            return Encoded(chunk.data, codec.content_type(meta))
        return codec.decode_value(chunk.data, codec.content_type(meta))

    def _halt(self) -> None:
        """HALT: the result says so (also for the tool's own final chunk, as in process)."""
        self._halted = True
        if self.result is None:
            self.result = StreamResult(self._chunks, -1, 0.0, True, halted=True)
        else:
            self.result = dataclasses.replace(self.result, halted=True)


class RemoteStream(_Remote):
    """An iterator over a remote stream's chunk data; also a context manager. Leaving the loop
    early or ``close()`` cancels the call (and so the tool in the worker): as for the in-process
    stream, ``iter(stream)`` is a one-shot generator only the loop holds, closed as it is left."""

    def __init__(self, call: Any, encode: str | None = None) -> None:
        super().__init__(encode)
        self._call: Any = call

    def __iter__(self) -> Iterator[Any]:
        return loop(self)

    def __next__(self) -> Any:
        if self.result is not None or self._call is _FINISHED:
            raise StopIteration
        try:
            chunk = next(self._call)
        except StopIteration:
            chunk = None
        except grpc.RpcError as error:  # the call itself (grpc's rendezvous is its own error)
            chunk = rpc_error(error)
        if type(chunk) is pb.ToolChunk:
            value = self._take(chunk)
            if value is _END:
                raise StopIteration
            return value
        # Over: the error is raised here, outside the handler, so that it does not hold the
        # finished call as its __context__, nor does this stream (a kept error keeps neither).
        self._call = _FINISHED
        raise chunk if chunk is not None else errors.worker_crashed(-1, {}, "a stream (it ended without its final chunk)")

    def halt(self) -> None:
        """Stop early, as HALT does (``result.halted`` is True)."""
        self._halt()
        self.close()

    def _left(self) -> None:  # a loop was left early: grpc's own cancel takes only its call's lock
        self.close()

    def close(self) -> None:
        """Cancel the call if it is still running; the iteration ends."""
        call, self._call = self._call, _FINISHED
        call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRemoteStream(_Remote):
    """``async for data in client.astream(...)``: the call is read on the shared loop."""

    def __init__(self, start: Callable[[], Any], encode: str | None = None) -> None:
        super().__init__(encode)
        self._start: Callable[[], Any] = start
        self._call: Any = None

    def __aiter__(self) -> AsyncLoop:
        """A one-shot iterator only the loop holds: leaving the loop early drops it, which
        cancels the call."""
        return AsyncLoop(self)

    async def __anext__(self) -> Any:
        if self.result is not None or self._call is _FINISHED:
            raise StopAsyncIteration
        if self._call is None:
            self._call = await on_shared_loop(self._start())
        chunk = await on_shared_loop(_read(self._call))
        if type(chunk) is not pb.ToolChunk:
            # Over: this stream lets go of the call (a traceback that keeps the stream, in a cycle
            # of the caller's, would keep grpc's call, and with it grpc's threads).
            self._call = _FINISHED
            if chunk is grpc.aio.EOF:  # pyright: ignore[reportAttributeAccessIssue]  # typeshed lacks it
                raise errors.worker_crashed(-1, {}, "a stream (it ended without its final chunk)")
            raise chunk
        value = self._take(chunk)
        if value is _END:
            raise StopAsyncIteration
        return value

    async def ahalt(self) -> None:
        self._halt()
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the call if it is still running; the iteration ends."""
        call, self._call = self._call, _FINISHED
        if call is not None and call is not _FINISHED:

            async def cancel() -> None:
                call.cancel()

            await on_shared_loop(cancel())

    def __del__(self) -> None:
        # Dropped before its end: cancel the call, and so the tool, as the in-process stream
        # does.
        self._left()

    def _left(self) -> None:
        """A loop over the stream was left (maybe in a garbage collection): cancelled, without
        waiting or taking a lock."""
        call, self._call = self._call, _FINISHED
        if call is not None and call is not _FINISHED:
            try:
                shared_loop().call_soon_threadsafe(call.cancel)
            except RuntimeError:  # the loop is closed: so is the call
                pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Finished:
    """Stands for a stream's grpc call once the stream is over (the call itself is let go)."""

    def cancel(self) -> None:
        pass

    def __next__(self) -> Any:
        raise StopIteration


_FINISHED: Any = _Finished()
_END: Any = object()  # a synthetic final chunk: the stream is over


async def _read(call: Any) -> Any:
    """The next message of an async stream's call, or ``EOF``, or the call's error as a
    ``SnakepitError`` -- returned, not raised: raised here, its traceback would hold this frame,
    and so the call."""
    try:
        return await call.read()
    except grpc.aio.AioRpcError as error:
        return rpc_error(error)


def _result(response: pb.ExecuteToolResponse, encode: str | None = None) -> Any:
    """The call's result; with an ``encode`` option, as the server sent it (an ``Encoded``)."""
    if not response.success:
        raise error_from_json(response.error_message)
    content_type = codec.content_type(response.metadata)
    data = response.result.value if content_type == codec.JSON else response.binary_result
    return Encoded(data, content_type) if encode is not None else codec.decode_value(data, content_type)


def _stream_result(meta: Mapping[str, str], attached: Mapping[str, Any] | None, chunks: int, halted: bool) -> StreamResult:
    """How a stream ended, from its final chunk: the server's account (``snakepit-final``), and
    the tool's own metadata (``attached``) as the result's ``metadata``."""
    account = msgspec.json.decode(meta[codec.FINAL]) if codec.FINAL in meta else {}
    return StreamResult(
        chunks=chunks,
        worker_id=int(account.get("worker_id", -1)),
        execution_time_ms=float(account.get("execution_time_ms", 0.0)),
        synthetic_final=bool(account.get("synthetic_final", False)),
        halted=halted,
        metadata=dict(attached) if attached is not None else None,
        correlation_id=account.get("correlation_id") or None,
    )


def _tool_spec(spec: pb.ToolSpec) -> ToolSpec:
    parameters = []
    for param in spec.parameters:
        default = None
        if param.HasField("default_value") and param.default_value.value:
            default = codec.decode_value(param.default_value.value, codec.JSON)
        parameters.append(ParameterSpec(param.name, param.type, param.required, default))
    return ToolSpec(spec.name, spec.description, parameters, spec.supports_streaming, spec.metadata.get("idempotent") == "true")


def _check_tool(tool: str, names: Iterable[str]) -> None:
    """``tool_not_found`` (naming the closest) unless the served pool has ``tool``."""
    if tool not in names:
        raise errors.validation(Reason.TOOL_NOT_FOUND, f"unknown tool {tool!r}{did_you_mean(tool, names)}", tool=tool)

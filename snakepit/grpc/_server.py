"""The gRPC facade's server: Snakepit's ``BridgeService`` in the owner process, over the pool.

``pool.serve(...)`` starts one. It runs on the process's shared gRPC loop (:mod:`.loop`) and
reaches the pool through its asyncio API: a call is a coroutine on that loop, a stream an
``astream`` -- no other process, no thread per stream. A client's cancellation, disconnect or
deadline cancels the task, which cancels the tool in the worker. Server-streaming writes wait for
HTTP/2 flow control, so a slow client slows the stream down; nothing buffers a whole stream.

Security: a loopback address (127.0.0.0/8, ``::1``, a name such as ``localhost`` that resolves
only to those) or a ``unix:`` socket path (guarded by its file permissions) needs nothing more. Any other address needs a bearer token or
mutual TLS (server TLS alone authenticates nobody), unless ``insecure=True``. With a token, every
call but the health service's must carry ``authorization: Bearer <token>`` (compared in constant
time). Pickled parameters are refused unless ``allow_pickle=True``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Self

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from snakepit import CallRequest, Encoded
from snakepit import _errors as errors
from snakepit._encoding import packed
from snakepit._errors import Reason
from snakepit._seam import binding
from snakepit.grpc import _codec as codec
from snakepit.grpc import _reflection, _telemetry, bridge_pb2_grpc
from snakepit.grpc import bridge_pb2 as pb
from snakepit.grpc._descriptors import Any as AnyMessage
from snakepit.grpc._descriptors import Timestamp
from snakepit.grpc._loop import run, shared_loop
from snakepit.grpc._status import ERROR_METADATA, error_json, is_tool_failure, status_of

if TYPE_CHECKING:
    from snakepit import Pool, ToolSpec

log = logging.getLogger("snakepit.grpc")

SERVICE = "snakepit.bridge.BridgeService"
CORRELATION_HEADER = "x-snakepit-correlation-id"  # Snakepit's clients send the call's id in this header
# A client whose network vanished (no FIN, no RST) is found within about 30 s: the server pings
# every connection this often, even while a stream is stalled on flow control...
_KEEPALIVE_MS = 20_000
# ...and drops it, cancelling its calls, when a ping goes unanswered this long (both the keepalive
# timeout and grpc's own ping timeout, whose default is a minute).
_KEEPALIVE_TIMEOUT_MS = 10_000
# A stream sends up to this many chunks that have already arrived before it asks the pool's
# iterator again: after grpc's own work, that iterator is what a chunk costs most.
_AT_HAND = 64
_DEADLINE_MARGIN = 0.25  # seconds (at most a tenth of the time left) the pool's timeout beats a deadline by
_ENVELOPE = 4096  # bytes of a response that are not its data, at most (ids, metadata, framing)
_UNTRUSTED_WINDOW = 1 << 20  # bytes of a stream's body grpc takes in before it is read, with a token
_BIND_ATTEMPTS = 4  # port 0: fresh ports to try when another server takes one between the check and the bind


@dataclass(frozen=True)
class TLS:
    """PEM files for the server's certificate and key; with ``client_ca_file``, clients must
    present a certificate signed by that CA (mutual TLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        with open(self.key_file, "rb") as key, open(self.cert_file, "rb") as cert:
            pair = [(key.read(), cert.read())]
        root = None
        if self.client_ca_file is not None:
            with open(self.client_ca_file, "rb") as ca:
                root = ca.read()
        return grpc.ssl_server_credentials(pair, root_certificates=root, require_client_auth=root is not None)

    def load(self) -> grpc.ServerCredentials:
        """:meth:`credentials`, or ``invalid_config`` saying which file could not be read."""
        try:
            return self.credentials()
        except (OSError, ValueError) as exc:
            raise errors.validation(Reason.INVALID_CONFIG, f"cannot use the TLS files: {exc}") from None


def check_bind(where: binding.Plan, *, token: str | None, tls: TLS | None, insecure: bool) -> None:
    """Refuse to expose the pool beyond this machine to whoever connects."""
    if where.unix or where.loopback_only or insecure or token or (tls is not None and tls.client_ca_file):
        return
    address = where.address
    raise errors.validation(
        Reason.INVALID_CONFIG,
        f"refusing to serve the pool on {address!r} to anyone who connects: give a token or mutual TLS "
        "(tls=TLS(..., client_ca_file=...)), bind a loopback address or a unix: socket, or pass insecure=True",
        address=address,
    )


class Server:
    """A running gRPC server for one pool (see :meth:`snakepit.Pool.serve`)."""

    def __init__(
        self,
        pool: Pool,
        address: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: TLS | None = None,
        allow_pickle: bool = False,
        insecure: bool = False,
        max_message_mb: float = 100,
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise errors.validation(Reason.INVALID_CONFIG, "token must be a non-empty str")
        max_bytes = codec.message_limit(max_message_mb)
        self._plan = binding.plan(address)
        check_bind(self._plan, token=token, tls=tls, insecure=insecure)
        self._credentials = None if tls is None else tls.load()
        self._pool: Pool = pool
        self._requested: str = address
        self._token: str | None = token
        self._allow_pickle: bool = allow_pickle
        self._max_bytes = max_bytes
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._bridge: _Bridge | None = None
        self.port: int = 0
        shared_loop()
        run(self._start())

    @property
    def address(self) -> str:
        """Where clients connect (with the port bound, if 0 was asked for)."""
        if self._requested.startswith("unix:"):
            return self._requested
        host = self._requested.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"<snakepit.grpc.Server {self.address} {'running' if self._server else 'stopped'}>"

    async def _start(self) -> None:
        """Bind every address the requested one stands for, each checked free first (see
        :mod:`.binding`), then serve. Another server may still take a port between the check and
        grpc's bind: with port 0 a fresh one is tried; else the address is refused."""
        server: grpc.aio.Server | None = None
        port = 0
        for attempt in range(_BIND_ATTEMPTS):
            try:
                where, port = self._plan.free_port()
            except binding.Taken as taken:
                raise self._refused(str(taken)) from None
            server = self._build()
            failed = self._bind(server, where.targets(port))
            if failed is None:
                break
            # grpc's unstarted server keeps what it did bind: started and stopped, it lets go.
            await server.start()
            await server.stop(None)
            if self._plan.port != 0 or attempt + 1 == _BIND_ATTEMPTS:
                hint = " (its TLS certificate or key may be invalid)" if self._credentials is not None else ""
                raise self._refused(f"grpc could not listen on {failed}{hint}")
        assert server is not None
        await server.start()
        await self._health.start()
        self._server, self.port = server, port

    def _refused(self, why: str) -> errors.SnakepitError:
        return errors.validation(Reason.INVALID_CONFIG, f"could not serve on {self._requested!r}: {why}", address=self._requested)

    def _build(self) -> grpc.aio.Server:
        options = [
            ("grpc.max_send_message_length", self._max_bytes),
            ("grpc.max_receive_message_length", self._max_bytes),
            ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream stalled by flow control
            ("grpc.http2.ping_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            # grpc's default lets a second server bind the same port and take half the calls (to
            # another pool: sessions would break silently). A taken address is an error.
            ("grpc.so_reuseport", 0),
        ]
        if self._token:
            # Whoever connects may send before the token is checked: grpc reads what its flow
            # control lets in, and its BDP probing grows those windows to the link (measured:
            # 25-70 MiB held per connection of many refused calls at once). With static windows
            # a connection holds a few MiB at most; a large argument then crosses a long, fast
            # link at most a window per round trip.
            options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", _UNTRUSTED_WINDOW)]
        interceptors = [_BearerToken(self._token)] if self._token else []
        server = grpc.aio.server(interceptors=interceptors, options=options)
        self._bridge = _Bridge(self._pool, self._allow_pickle, self._max_bytes)
        bridge_pb2_grpc.add_BridgeServiceServicer_to_server(self._bridge, server)
        self._health = _PoolHealth(self._pool)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        _reflection.enable(server, (SERVICE, health.SERVICE_NAME))
        return server

    def _bind(self, server: grpc.aio.Server, targets: list[str]) -> str | None:
        """Add each target as a port of its own (grpc would take a name's addresses as one port,
        bound if any of them is free); the first it could not bind, or None."""
        for target in targets:
            try:
                if self._credentials is not None:
                    bound = server.add_secure_port(target, self._credentials)
                else:
                    bound = server.add_insecure_port(target)
            except RuntimeError:  # grpcio raises for an address it cannot bind
                return target
            if not bound and not target.startswith("unix:"):  # a socket path has no port to report
                return target
        return None

    def stop(self, grace: float | None = None) -> None:
        """Stop serving: in-flight calls may finish within ``grace`` seconds, then are cancelled
        (their tools are cancelled in the workers)."""
        server, self._server = self._server, None
        if server is not None:
            run(self._stop(server, grace))

    async def _stop(self, server: grpc.aio.Server, grace: float | None) -> None:
        if self._bridge is not None:
            self._bridge.hub.close()  # telemetry streams end now, not at the grace's end
        if self._health is not None:
            await self._health.stop()
        await server.stop(grace)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _PoolHealth(health.aio.HealthServicer):  # pyright: ignore[reportAttributeAccessIssue]  # typeshed lacks aio
    """``grpc.health.v1``: SERVING while the pool has a worker ready to call, NOT_SERVING when it
    has none (every worker died and none has come back yet) or is closing. ``Check`` looks at the
    pool as it answers; ``Watch`` streams hear of a change within a polling period."""

    POLL_SECONDS = 0.5

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self._pool: Pool = pool
        self._status: int | None = None
        self._watching: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._watching = asyncio.get_running_loop().create_task(self._watch_pool())

    async def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None
        await self.enter_graceful_shutdown()

    async def refresh(self) -> None:
        serving = self._pool.serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != self._status:
            self._status = status
            for name in ("", SERVICE):
                await self.set(name, status)

    async def _watch_pool(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_SECONDS)
            await self.refresh()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        await self.refresh()
        return await super().Check(request, context)


class _BearerToken(grpc.aio.ServerInterceptor):
    """Every call but the health service's carries ``authorization: Bearer <token>``.

    Decided on the metadata alone, before the request is read: grpc.aio receives and deserializes
    a unary request before its handler runs, so a refusal of the method's own kind would let
    whoever connects make the server take in messages of up to ``max_message_mb``. A refused call
    gets a request-streaming handler that reads nothing and aborts at once; grpc core holds at
    most the stream's HTTP/2 flow-control window of its body (see the gRPC guide's *Security*).
    """

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        details = handler_call_details
        if details.method.startswith(_HEALTH) or self._carries_token(details.invocation_metadata):
            return await continuation(details)
        return _REFUSAL

    def _carries_token(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            scheme, _, credentials = str(value).partition(" ")
            # The scheme is case-insensitive (RFC 7235); the token, compared in constant time, is not.
            if scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), self._expected):
                return True
        return False


_HEALTH = "/grpc.health.v1.Health/"


async def _refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
    """The handler of every unauthenticated call, whatever its method's kind: it reads none of
    the request (no deserializer either) and answers UNAUTHENTICATED."""
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"
    )


_REFUSAL = grpc.stream_stream_rpc_method_handler(_refuse)


def _now() -> timestamp_pb2.Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


_OWN_TOOLS = "snakepit."  # tools snakepit hosts for itself: never served


async def _abort(
    context: grpc.aio.ServicerContext,
    error: errors.SnakepitError,
    about: Mapping[str, str] | None = None,
    accept_pickle: bool = False,
) -> NoReturn:
    """End the call with ``error`` as its status. grpc keeps the abort's exception in a cycle
    (its traceback holds the handler's frames, which hold grpc's record of the call, which holds
    the exception) until a garbage collection: what it reaches is kept small -- the error's own
    traceback, the pool's frames, is dropped, and handlers let go of their streams first."""
    text = error_json(error, about, accept_pickle=accept_pickle)
    error.__traceback__ = error.__context__ = error.__cause__ = None
    await context.abort(status_of(error), text, trailing_metadata=((ERROR_METADATA, text),))
    raise AssertionError("grpc's abort returned")  # it raises: the call is over


class _Bridge(bridge_pb2_grpc.BridgeServiceServicer):
    def __init__(self, pool: Pool, allow_pickle: bool, max_bytes: int) -> None:
        self._pool: Pool = pool
        self._allow_pickle: bool = allow_pickle
        self._max_bytes: int = max_bytes
        # What a result or chunk's data may take of a message: the rest is the envelope (ids, metadata).
        self._budget = max(max_bytes - _ENVELOPE, max_bytes // 2)
        self.hub = _telemetry.Hub(pool, max_bytes)

    # -- calls -----------------------------------------------------------------------------------

    def _prepare(self, request: pb.ExecuteToolRequest, context: grpc.aio.ServicerContext) -> tuple[CallRequest, dict[str, str]]:
        """The call, as the pool takes it, and its metadata (the call's gRPC metadata,
        overridden by the request's own)."""
        if request.tool_name.startswith(_OWN_TOOLS):  # e.g. the Executor's, which runs any pickled callable
            raise errors.validation(Reason.TOOL_NOT_FOUND, f"unknown tool {request.tool_name!r}", tool=request.tool_name)
        meta = {key: str(value) for key, value in (context.invocation_metadata() or ())}
        meta.update(request.metadata)
        args = codec.decode_parameters(request.parameters, request.binary_parameters, meta, allow_pickle=self._allow_pickle)
        timeout = None
        if meta.get("timeout_ms"):
            try:
                timeout = int(meta["timeout_ms"]) / 1000.0
            except ValueError:
                timeout = 0.0
            if not timeout > 0:  # checked before the deadline's bound below can hide it
                raise errors.validation(
                    Reason.INVALID_ARGUMENTS, f"timeout_ms must be a positive integer, got {meta['timeout_ms']!r}"
                )
        remaining = context.time_remaining()
        if remaining is not None:
            # The pool's timeout fires a little before grpc's deadline, so that the client gets
            # the error's JSON (a timeout, its stage) rather than grpc's bare DEADLINE_EXCEEDED.
            remaining -= min(_DEADLINE_MARGIN, remaining / 10)
            timeout = remaining if timeout is None else min(timeout, remaining)
            timeout = max(timeout, 0.001)  # the deadline is near: let the call time out, not refuse it
        if not meta.get("correlation_id") and meta.get(CORRELATION_HEADER):  # the request's own wins
            meta["correlation_id"] = meta[CORRELATION_HEADER]
        if meta.get("correlation_id"):
            log.info(
                "call %s of %r (correlation_id %s)",
                "stream" if request.stream else "execute",
                request.tool_name,
                meta["correlation_id"],
            )
        return CallRequest(
            request.tool_name,
            args,
            request.session_id or None,
            meta.get("affinity") or None,
            timeout,
            meta.get("correlation_id") or None,
        ), meta

    async def ExecuteTool(self, request: pb.ExecuteToolRequest, context: grpc.aio.ServicerContext) -> pb.ExecuteToolResponse:
        started = time.perf_counter()
        response = pb.ExecuteToolResponse()
        meta: Mapping[str, str] = {}
        try:
            call, meta = self._prepare(request, context)
            value = await self._pool.arun(call)
            data, content_type = self._encoded(value, meta.get("accept") == "pickle")
        except errors.SnakepitError as error:
            accept_pickle = meta.get("accept") == "pickle"
            if not is_tool_failure(error):
                await _abort(context, error, _about(request), accept_pickle)
            response.success = False
            response.error_message = error_json(error, _about(request), accept_pickle=accept_pickle)
        else:
            response.success = True
            if content_type == codec.JSON:
                response.result.type_url = codec.TYPE_PREFIX + ("float" if type(value) is float else "json")
                response.result.value = data
            else:  # result left unset: Snakepit's clients take binary_result alone
                response.binary_result = data
                codec.set_content_type(response.metadata, content_type)
        response.execution_time_ms = int((time.perf_counter() - started) * 1000)
        if meta.get("correlation_id"):
            response.metadata["correlation_id"] = meta["correlation_id"]
        return response

    async def ExecuteStreamingTool(
        self, request: pb.ExecuteToolRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ToolChunk]:
        started = time.perf_counter()
        stream = None
        failure = None
        accept_pickle = False
        try:
            call, meta = self._prepare(request, context)
            accept_pickle = meta.get("accept") == "pickle"
            batch = _batch_size(meta)
            # Each chunk comes encoded as this client takes it, by the worker (which has a core of
            # its own), batches packed there too: this thread, every stream's, forwards bytes.
            encode = "pickle" if accept_pickle else "json"
            stream = self._pool.open_astream(call._replace(encode=encode, batch=batch))
            name = request.tool_name
            count = 0
            budget, message_of, json = self._budget, pb.ToolChunk, codec.JSON  # the loop's per-chunk look-ups
            async for item in stream:
                # A batch is a message (two, if it is too large for one); else a chunk is, those
                # already here skipping a pass through the iterator each. A chunk the tool attached
                # metadata to travels alone (take_ready stops before one).
                attached = stream.metadata
                if batch is not None:
                    messages: list[Encoded] = [item] if len(item.data) <= budget else self._split(item, accept_pickle)
                elif attached is not None:
                    messages = [item]
                else:
                    messages = [item, *stream.take_ready(_AT_HAND - 1)]
                final = stream.last_was_final
                last = len(messages) - 1
                for index, message in enumerate(messages):
                    data = message.data
                    if len(data) > budget:
                        raise self._too_large(len(data))
                    count += 1
                    chunk = message_of(chunk_id=f"{name}-{count}", data=data)
                    if attached is not None:
                        codec.attach_metadata(chunk.metadata, attached, accept_pickle=accept_pickle)
                    if message.content_type != json:
                        codec.set_content_type(chunk.metadata, message.content_type)
                    if final and index == last:
                        self._finish(chunk, stream, meta, started)
                        yield chunk
                        return
                    yield chunk
            count += 1
            closing = pb.ToolChunk(chunk_id=f"{name}-{count}", data=b"", metadata={"synthetic_final": "true"})
            self._finish(closing, stream, meta, started, synthetic=True)
            yield closing
        except errors.SnakepitError as error:
            failure = error
        finally:
            if stream is not None:
                await stream.aclose()
                stream = None  # not kept by the abort's traceback (see _abort)
        if failure is not None:
            await _abort(context, failure, _about(request), accept_pickle)

    def _encoded(self, value: Any, accept_pickle: bool) -> tuple[bytes, str]:
        data, content_type = codec.encode_value(value, accept_pickle=accept_pickle)
        if len(data) > self._budget:
            raise self._too_large(len(data))
        return data, content_type

    def _split(self, batch: Encoded, accept_pickle: bool) -> list[Encoded]:
        """A batch too large for a message (a server of a small ``max_message_mb``), as batches
        that fit; a lone chunk too large is refused by the caller."""
        values = codec.decode_value(batch.data, batch.content_type)
        if len(values) == 1:
            return [batch]
        half = len(values) // 2
        parts: list[Encoded] = []
        for part in (packed(values[:half], accept_pickle=accept_pickle), packed(values[half:], accept_pickle=accept_pickle)):
            parts += [part] if len(part.data) <= self._budget else self._split(part, accept_pickle)
        return parts

    def _too_large(self, size: int) -> errors.SnakepitError:
        return errors.validation(
            Reason.SERIALIZATION_ERROR,
            f"a value of {size:,} bytes does not fit in a message of this server (max_message_mb="
            f"{self._max_bytes / 2**20:g}); stream it in smaller chunks",
            size=size,
            limit=self._budget,
        )

    @staticmethod
    def _finish(chunk: pb.ToolChunk, stream: Any, meta: Mapping[str, str], started: float, *, synthetic: bool = False) -> None:
        """The final chunk: the server's keys beside the tool's, never over them."""
        chunk.is_final = True
        correlation_id = meta.get("correlation_id") or stream.correlation_id  # the pool made one if none was given
        elapsed_ms = (time.perf_counter() - started) * 1000
        ours = {
            "execution_time_ms": str(int(elapsed_ms)),
            "tool_type": "remote",
            "worker_id": str(stream.worker_id),
            "correlation_id": correlation_id or "",
        }
        for key, value in ours.items():
            if value and key not in chunk.metadata:
                chunk.metadata[key] = value
        account = {
            "worker_id": stream.worker_id,
            "execution_time_ms": elapsed_ms,
            "correlation_id": correlation_id,
            "synthetic_final": synthetic,
        }
        chunk.metadata[codec.FINAL] = codec.encode_json(account).decode()

    # -- sessions and tools ----------------------------------------------------------------------

    async def Ping(self, request: pb.PingRequest, context: grpc.aio.ServicerContext) -> pb.PingResponse:
        return pb.PingResponse(message=request.message, server_time=_now())

    async def InitializeSession(
        self, request: pb.InitializeSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.InitializeSessionResponse:
        if request.session_id:  # an empty id lists the tools without using up a session
            try:
                # The metadata lives (and expires) with the pool's own record of the session.
                self._pool.session(request.session_id, metadata=dict(request.metadata))
            except errors.SnakepitError as error:
                await _abort(context, error)
        # How many calls the pool runs at once: what a client's map keeps in flight.
        context.set_trailing_metadata(((codec.CAPACITY, str(self._pool.size * self._pool.threads_per_worker)),))
        return pb.InitializeSessionResponse(
            success=True,
            available_tools={spec.name: _tool_spec(spec) for spec in self._pool.tools() if not spec.name.startswith(_OWN_TOOLS)},
        )

    async def CleanupSession(
        self, request: pb.CleanupSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CleanupSessionResponse:
        existed = self._pool.close_session(request.session_id)
        return pb.CleanupSessionResponse(success=True, resources_cleaned=int(existed))

    async def GetSession(self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext) -> pb.GetSessionResponse:
        session = self._pool.touch_session(request.session_id)
        if session is None:
            await _abort(context, errors.pool_error(Reason.SESSION_NOT_FOUND, f"no session {request.session_id!r}"))
        created = Timestamp()
        created.FromNanoseconds(int(session.created_at * 1e9))
        return pb.GetSessionResponse(
            session_id=request.session_id, metadata=session.metadata, created_at=created, tool_count=len(self._pool.tools())
        )

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        valid = bool(request.session_id) and self._pool.touch_session(request.session_id) is not None
        return pb.HeartbeatResponse(server_time=_now(), session_valid=valid)

    # -- telemetry -------------------------------------------------------------------------------

    async def StreamTelemetry(
        self,
        request_iterator: Iterator[pb.TelemetryControl] | AsyncIterator[pb.TelemetryControl],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.TelemetryEvent]:
        """The pool's events, as they happen, under the subscriber's controls (see :mod:`._telemetry`)."""
        loop = asyncio.get_running_loop()
        subscription = self.hub.join(loop)
        controls = loop.create_task(subscription.follow(request_iterator))
        try:
            await context.send_initial_metadata(())  # the client's call starts now, not at the first event
            async for event in subscription.events():
                yield event
        finally:
            self.hub.leave(subscription)
            controls.cancel()

    # -- Snakepit's own runtime's rpcs ----------------------------------------------------------------

    async def RegisterTools(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server hosts its tools in its pool; it registers none")

    async def GetExposedElixirTools(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server exposes no Elixir tools")

    async def ExecuteElixirTool(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server exposes no Elixir tools")


def _about(request: pb.ExecuteToolRequest) -> dict[str, str]:
    """The call, as an error's ``context`` says it."""
    about = {"tool_name": request.tool_name}
    if request.session_id:
        about["session_id"] = request.session_id
    return about


def _batch_size(meta: Mapping[str, str]) -> int | None:
    """Request metadata ``chunk_batch`` = N: up to N chunks per ``ToolChunk``, ``data`` a JSON
    array of them, sent as soon as they are at hand (never waiting to fill a batch)."""
    text = meta.get("chunk_batch")
    if not text:
        return None
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"chunk_batch must be a positive integer, got {text!r}")
    return size


def _tool_spec(spec: ToolSpec) -> pb.ToolSpec:
    parameters = []
    for param in spec.parameters:
        message = pb.ParameterSpec(name=param.name, type=param.type, required=param.required)
        if not param.required:
            message.default_value.CopyFrom(
                AnyMessage(type_url=codec.TYPE_PREFIX + param.type, value=codec.encode_json(param.default))
            )
        parameters.append(message)
    return pb.ToolSpec(
        name=spec.name,
        description=spec.description,
        parameters=parameters,
        supports_streaming=spec.supports_streaming,
        metadata={"idempotent": "true"} if spec.idempotent else {},
    )

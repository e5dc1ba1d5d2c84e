"""A pool's calls from request to outcome: one module for the sync and the asyncio paths.

Each call is checked and encoded before it takes a worker (:meth:`CallRunner.prepare`), takes
one (the dispatcher's checkout, waited for by a thread or by the event loop), is sent by its
:class:`~snakepit._pool.exchange.Exchange` and driven to its result. After a failed attempt one
decision (:meth:`CallRunner.failed`) serves both paths: the worker comes back, and the call runs
again -- an idempotent tool's call whose worker died under it, within ``max_retries`` and its
deadline -- or ends with its error, counted. A map's engine is set up here too, with the same
checks, ids, retries and counters.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple

from snakepit import _errors as errors
from snakepit import _protocol as protocol
from snakepit import _tracing as tracing
from snakepit._adapter import ToolSpec
from snakepit._encoding import check_batch, check_encoding
from snakepit._errors import Reason
from snakepit._pool import aio, mapping
from snakepit._pool.dispatcher import Counters, Dispatcher
from snakepit._pool.exchange import Exchange
from snakepit._pool.metering import CallMeter
from snakepit._seam.affinity import Affinity
from snakepit._seam.request import (
    CallContext,
    CallRequest,
    check_correlation_id,
    check_routing,
    did_you_mean,
    map_total,
    positive_int,
)
from snakepit._seam.timing import check_timeout, deadline_after, seconds
from snakepit.progress import Reporter

__all__ = ["CallRunner", "PreparedCall", "Retry"]


class CallRunner:
    """Runs a pool's calls (see the module's docstring)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        counters: Counters,
        *,
        timeout: float | None,
        queue_timeout: float | None,
        max_retries: int,
        attachments: Callable[[], Any] | None,
        encodes: bool = False,
    ) -> None:
        self.dispatcher = dispatcher
        self.counters = counters
        self.timeout = timeout  # the pool's default per call
        self.queue_timeout = queue_timeout
        self.max_retries = max_retries
        self.attachments = attachments  # large arguments beside the frame, if the backend carries them
        self.encodes = encodes  # the backend's workers encode values for a call's encode option
        self.tools: dict[str, ToolSpec] = {}  # once the workers are ready
        self.tracer: tracing.CallTracer | None = None  # OpenTelemetry spans per call, from start()
        self.meter: CallMeter | None = None  # per-tool metrics, once enabled (see metering.py)
        self._correlation_prefix = secrets.token_hex(4)  # generated correlation ids: "<prefix>-<n>"
        self._correlation_seq = itertools.count(1)

    def restarter(self, request: CallRequest) -> Callable[[errors.SnakepitError, Exchange], Exchange | None]:
        """For a stream iterator: its call run again after an error, where :meth:`retry_after`
        allows (None where it does not)."""

        def restart(error: errors.SnakepitError, exchange: Exchange) -> Exchange | None:
            context = exchange.context
            assert context is not None
            if not self.retry_after(error, exchange, request, context):
                return None
            time.sleep(context.retry.delay)
            return self.begin(request, True, context)

        return restart

    def arestarter(self, request: CallRequest) -> Callable[[errors.SnakepitError, Exchange], Awaitable[Exchange | None]]:
        """:meth:`restarter` for asyncio."""

        async def restart(error: errors.SnakepitError, exchange: Exchange) -> Exchange | None:
            context = exchange.context
            assert context is not None
            if not self.retry_after(error, exchange, request, context):
                return None
            await asyncio.sleep(context.retry.delay)
            return await self.abegin(request, True, context)

        return restart

    def call(self, request: CallRequest, stream: bool, drive: Callable[[Exchange], Any], *, lasting: bool = False) -> Any:
        """Check the call, take a worker, send the call, and hand its exchange to ``drive``,
        counting it and its error; run it again where :meth:`retry_after` allows. ``lasting``:
        ``drive`` returns what goes on with the call (a stream iterator), which ends it."""
        self.counters.bump("requests")
        context = self.context(request)
        while True:
            exchange = None
            try:
                exchange = self.begin(request, stream, context)
                outcome = drive(exchange)
            except BaseException as error:
                delay = self.failed(error, exchange, request, context)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            if not lasting:
                context.end()
            return outcome

    def failed(self, error: BaseException, exchange: Exchange | None, request: CallRequest, context: CallContext) -> float | None:
        """An attempt failed (sync or async: the one decision of both): its worker comes back,
        and the call runs again after the delay returned, or ends with ``error`` (None)."""
        if exchange is not None:
            exchange.cancel()  # a no-op without a worker, or once the call has ended
        if isinstance(error, errors.SnakepitError):
            if self.retry_after(error, exchange, request, context):
                assert context.retry is not None
                return float(context.retry.delay)
            self.counters.bump("errors")
        context.end(error)
        return None

    def context(self, request: CallRequest, *, single: bool = True) -> CallContext:
        """A call's correlation id (the caller's, or a new one) and trace span; with metrics
        enabled, the span is what measures the call (a map's, not ``single``, is measured by
        its batches)."""
        correlation_id = request.correlation_id
        if correlation_id is None:
            correlation_id = f"{self._correlation_prefix}-{next(self._correlation_seq)}"
        else:
            check_correlation_id(correlation_id)
        span: Any = None if self.tracer is None else self.tracer.start(request.tool, correlation_id, request.session_id)
        if self.meter is not None and single:
            span = self.meter.start(request.tool, span)
        return CallContext(correlation_id, span)

    def begin(self, request: CallRequest, stream: bool, context: CallContext) -> Exchange:
        """Check the call, take a worker and send the call.

        The exchange exists before the checkout, so that it owns the worker from the moment the
        worker is assigned: whatever interrupts a step after that, the worker comes back.
        """
        call = self.prepare(request, stream, context)
        exchange = self._exchange(call, context, threading.get_ident())
        try:
            self.dispatcher.checkout(call.session_id, call.affinity, call.queue_deadline, call.deadline, exchange)
            if context.span is not None:
                context.span.running(exchange.handle.id, exchange)
            exchange.start(call.frame, call.attachments)
        except BaseException:
            exchange.cancel()
            raise
        return exchange

    def retry_after(
        self, error: errors.SnakepitError, exchange: Exchange | None, request: CallRequest, context: CallContext
    ) -> bool:
        """Whether a failed call runs again (``context.retry`` says when): only an idempotent
        tool's call whose worker died under it (not killed by the pool) before the caller got
        anything of it, outside a strict session, within ``max_retries`` and the call's
        deadline, and not while the pool drains."""
        previous = context.retry
        attempt = 0 if previous is None else previous.attempt
        if (
            error.reason != Reason.WORKER_CRASHED
            or attempt >= self.max_retries
            or exchange is None
            or exchange.handle is None
            or exchange.chunks
            or exchange.handle.killed_on_purpose
            or self.dispatcher.draining  # running it again would be a new call, which a drain refuses
        ):
            return False
        spec = self.tools.get(exchange.tool)
        if spec is None or not spec.idempotent:
            return False
        if request.session_id is not None:
            mode = self.dispatcher.mode_of(request.session_id, check_routing(request.session_id, request.affinity))
            if mode is not Affinity.HINT:  # its state died with its worker
                return False
        delay = RETRY_BACKOFF * 2**attempt
        if exchange.deadline is not None and time.monotonic() + delay >= exchange.deadline:
            return False
        self.counters.bump("retries")
        self.dispatcher.observer.emit(
            "call_retry",
            logging.WARNING,
            f"worker {exchange.handle.id} died under an idempotent call to {exchange.tool!r}; running it again in {delay * 1000:.0f} ms",
            tool=exchange.tool,
            worker_id=exchange.handle.id,
            attempt=attempt + 1,
            cause=error.details.get("cause"),
            delay=delay,
            correlation_id=context.correlation_id,
        )
        context.retry = Retry(attempt + 1, exchange.deadline, delay)
        return True

    async def acall(
        self,
        request: CallRequest,
        stream: bool,
        drive: Callable[[Exchange], Awaitable[Any]],
        running: Callable[[], bool] | None = None,
    ) -> Any:
        """:meth:`call` for asyncio. ``running``: told when the call has its worker (a future's
        ``set_running_or_notify_cancel``); if it says False, the call is withdrawn unsent."""
        self.counters.bump("requests")
        context = self.context(request)
        while True:
            exchange = None
            try:
                exchange = await self.abegin(request, stream, context, running)
                outcome = await drive(exchange)
            except BaseException as error:
                delay = self.failed(error, exchange, request, context)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            context.end()
            return outcome

    async def abegin(
        self, request: CallRequest, stream: bool, context: CallContext, running: Callable[[], bool] | None = None
    ) -> Exchange:
        call = self.prepare(request, stream, context)
        exchange = self._exchange(call, context, asyncio.current_task())
        try:
            await aio.checkout(self.dispatcher, call.session_id, call.affinity, call.queue_deadline, call.deadline, exchange)
            if running is not None and not running():
                raise asyncio.CancelledError  # its future was cancelled as it got the worker
            if context.span is not None:
                context.span.running(exchange.handle.id, exchange)
            if exchange.handle.conn.fits(len(call.frame)):  # the idle worker's pipe takes it at once
                exchange.start(call.frame, call.attachments)
                return exchange
        except BaseException:
            exchange.cancel()
            raise
        await aio.start_off_loop(exchange, call.frame, call.attachments)  # cancels the exchange itself if need be
        return exchange

    def spec(self, tool: str) -> ToolSpec:
        if not isinstance(tool, str):
            raise errors.validation(Reason.INVALID_ARGUMENTS, f"a tool's name is a str, got {type(tool).__name__}")
        spec = self.tools.get(tool)
        if spec is None:
            if self.dispatcher.closed:
                raise errors.pool_closed()
            raise errors.validation(Reason.TOOL_NOT_FOUND, f"unknown tool {tool!r}{did_you_mean(tool, self.tools)}", tool=tool)
        return spec

    def _exchange(self, call: PreparedCall, context: CallContext, caller: object) -> Exchange:
        """The exchange of ``call``, begun by ``caller`` (a thread's ident, or an asyncio task)."""
        return Exchange(
            self.dispatcher, call.tool, call.deadline, context, call.timeout, caller, call.encode, self.encodes, call.batch
        )

    def prepare(self, request: CallRequest, stream: bool, context: CallContext) -> PreparedCall:
        """Everything that can be checked and encoded before a worker is taken (a retry keeps
        the first attempt's deadline)."""
        tool, args, session_id, affinity, timeout, _, encode, batch = request
        retry = context.retry
        spec = self.tools.get(tool) if type(tool) is str else None
        spec = spec or self.spec(tool)
        if stream and not spec.supports_streaming:
            raise errors.validation(Reason.NOT_STREAMING, f"tool {tool!r} does not support streaming; use execute()", tool=tool)
        if type(args) is not dict:
            if args is None:
                args = {}
            elif not isinstance(args, Mapping):
                raise errors.validation(Reason.INVALID_ARGUMENTS, f"args must be a dict, got {type(args).__name__}", tool=tool)
            else:
                args = dict(args)
        mode = None if session_id is None and affinity is None else check_routing(session_id, affinity)
        limit = self.timeout if timeout is None else check_timeout("timeout", timeout)
        if encode is not None:
            check_encoding(encode)
        if batch is not None:
            batch = check_batch(batch, encode, stream)
        attachments = exact = None
        if self.attachments is not None:
            exact = protocol.exact_args(args)
            if not exact:  # pickled: large arrays go beside
                attachments = self.attachments()
        frame = protocol.call_frame(
            tool,
            args,
            stream,
            None if attachments is None else attachments.share,
            context.correlation_id,
            None if context.span is None else context.span.traceparent,
            exact,
            encode if self.encodes else None,  # else the owner encodes every value (see Exchange.deliver)
            batch if self.encodes else None,  # and packs a batched stream's (see Delivery.take)
        )
        now = time.monotonic()
        queue_limit = self.queue_timeout
        deadline = None if limit is None else now + limit
        queue_deadline = None if queue_limit is None else now + queue_limit
        if retry is not None:
            deadline = retry.deadline
            if deadline is not None:
                queue_deadline = deadline if queue_deadline is None else min(queue_deadline, deadline)
        return PreparedCall(
            tool,
            frame,
            session_id,
            mode,
            queue_deadline,
            deadline,
            attachments if attachments is not None and attachments.fds else None,
            limit,
            encode,
            batch,
        )

    def map_setup(
        self,
        tool: str,
        iterable_of_args: Iterable[Any],
        total: int | None,
        ordered: bool,
        return_exceptions: bool,
        progress: bool | Callable[[int, int | None], None],
        chunksize: int | None,
        session_id: str | None,
        affinity: Affinity | str | None,
        timeout: float | None,
        correlation_id: str | None,
        *,
        sync: bool,
    ) -> tuple[Any, ...]:
        spec = self.spec(tool)
        positive_int("chunksize", chunksize, allow_none=True, reason=Reason.INVALID_ARGUMENTS)
        mode = check_routing(session_id, affinity)
        retries = self.max_retries if spec.idempotent else 0
        if retries and session_id is not None and self.dispatcher.mode_of(session_id, mode) is not Affinity.HINT:
            retries = 0  # a strict session's state died with its worker
        batch_timeout = self.timeout if timeout is None else check_timeout("timeout", timeout)
        context = self.context(CallRequest(tool, None, session_id, affinity, timeout, correlation_id), single=False)  # checked
        total = map_total(iterable_of_args, total)
        reporter = Reporter(progress, total, description=tool)
        engine = mapping.MapEngine(
            self.dispatcher,
            tool,
            iterable_of_args,
            ordered=ordered,
            chunksize=chunksize,
            timeout=batch_timeout,
            on_progress=reporter.update if reporter.active else None,
            on_items=lambda count: self.counters.bump("requests", count),
            on_timeout=lambda worker_id, items: self._map_timed_out(tool, worker_id, items, batch_timeout),
            on_close=lambda engine: self._map_closed(engine, reporter),
            retries=retries,
            on_retry=lambda handle, items, info: self._map_retried(tool, handle, items, info, context.correlation_id),
            context=context,
            meter=self.meter,
        )

        # The engine owns the workers it is given from the moment they are assigned.
        def first() -> Any:
            queue_deadline = deadline_after(self.queue_timeout)
            if sync:
                return self.dispatcher.checkout(session_id, mode, queue_deadline, None, engine)
            return aio.checkout(self.dispatcher, session_id, mode, queue_deadline, None, engine)

        def more() -> Any:
            return None if session_id is not None else self.dispatcher.checkout_now(engine)

        return engine, first, more, return_exceptions

    def _map_retried(self, tool: str, handle: Any, items: int, info: dict[str, Any], correlation_id: str) -> None:
        self.counters.bump("retries", items)
        self.dispatcher.observer.emit(
            "call_retry",
            logging.WARNING,
            f"worker {handle.id} died under a map of idempotent {tool!r}; running its {items} item(s) again one by one",
            tool=tool,
            worker_id=handle.id,
            items=items,
            cause=info.get("cause"),
            correlation_id=correlation_id,
        )

    def _map_timed_out(self, tool: str, worker_id: int, items: int, limit: float | None) -> None:
        """A map batch ran past its timeout: each of its items (and of the batches queued behind
        it, cancelled with it) counts as a timed-out call."""
        self.counters.bump("timeouts", items)
        self.dispatcher.observer.emit(
            "timeout",
            logging.INFO,  # the caller gets the error too
            f"a batch of {tool!r} on worker {worker_id} exceeded its timeout{'' if limit is None else f' of {seconds(limit)}'}",
            tool=tool,
            worker_id=worker_id,
            items=items,
            timeout=limit,
        )

    def _map_closed(self, engine: mapping.MapEngine, reporter: Reporter) -> None:
        reporter.close()
        if engine.failed:
            self.counters.bump("errors", engine.failed)


RETRY_BACKOFF = 0.05  # seconds before a first retry; doubling for each further one


class Retry(NamedTuple):
    attempt: int  # how many times the call has been run again, this one included
    deadline: float | None  # the first attempt's
    delay: float


class PreparedCall:
    """A call checked and encoded, waiting for a worker."""

    __slots__ = (
        "tool",
        "frame",
        "session_id",
        "affinity",
        "queue_deadline",
        "deadline",
        "attachments",
        "timeout",
        "encode",
        "batch",
    )

    def __init__(
        self,
        tool: str,
        frame: bytearray,
        session_id: str | None,
        affinity: Affinity | None,
        queue_deadline: float | None,
        deadline: float | None,
        attachments: Any = None,
        timeout: float | None = None,
        encode: str | None = None,
        batch: int | None = None,
    ) -> None:
        self.tool = tool
        self.frame = frame  # without its id, which is drawn when it is sent
        self.session_id = session_id
        self.affinity = affinity
        self.queue_deadline = queue_deadline
        self.deadline = deadline
        self.attachments = attachments  # large arguments in shared memory; freed when dropped unsent
        self.timeout = timeout  # the call's limit in seconds (None: none), named when it is exceeded
        self.encode = encode  # the call's encode option: its values are handed back as Encoded
        self.batch = batch  # a batched stream's most chunks per value

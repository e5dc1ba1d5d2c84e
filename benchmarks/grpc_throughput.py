"""The gRPC facade against bare grpcio, side by side in one run, in each placement of the owner's
threads and the worker: stream chunks/s and unary p50.

Streams:

* ``in-process stream()``: what the facade wraps, for scale;
* ``facade, one ToolChunk per chunk``: ``ExecuteStreamingTool`` of small dict chunks;
* ``bare grpcio (asyncio)``: a grpc.aio server-streaming handler on the same loop thread that
  yields pre-encoded ``ToolChunk`` messages -- the transport's own ceiling for one message per chunk;
* ``facade, chunk_batch=256``: the batched mode, up to 256 chunks (those at hand) per message.

Unary, a tiny ``add``, p50 over interleaved rounds, taken apart:

* ``bare grpcio unary (asyncio)``: a grpc.aio unary handler returning a fixed response;
* ``bare grpcio + echo through a child process``: the same handler, first sending one byte to a
  child process and awaiting it back through the loop -- the cheapest hop to another process
  a handler can make;
* ``bare grpcio + pool.arun``: the same handler awaiting the pool's call of ``add`` (the
  worker's round trip, without the facade's decoding and encoding);
* ``facade ExecuteTool``: the whole facade.

Every contender is read by the same synchronous stub of the generated code, in this process. As
in ``execute_latency``, each table is measured unpinned, with every thread of this process and
the worker on one core, and on two (``os.sched_setaffinity``): grpcio itself runs twice as fast
on one core as across two, so the placements disagree, and a claim is the worst of them.

Run: ``python -m benchmarks.grpc_throughput [--chunks N] [--repeats R] [--calls C] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from snakepit import BaseAdapter, Pool, tool
from snakepit._seam.request import CallRequest
from snakepit.grpc import _codec as codec
from snakepit.grpc import _loop, bridge_pb2_grpc
from snakepit.grpc import bridge_pb2 as pb
from snakepit.grpc._loop import run

from ._harness import common_options, emit_json, interleaved, medians, pin, piped_child, placements, print_table


class Numbers(BaseAdapter):
    @tool
    def numbers(self, n: int):
        for i in range(n):
            yield {"number": i, "is_last": i == n - 1}

    @tool
    def add(self, a: int, b: int) -> int:
        return a + b


class _Bare(bridge_pb2_grpc.BridgeServiceServicer):
    """What grpcio itself does with no pool behind it: pre-encoded messages, a fixed answer
    (after awaiting ``hop``, if given)."""

    def __init__(self, chunks: list[pb.ToolChunk], hop: Callable[[], Awaitable[Any]] | None = None) -> None:
        self._chunks = chunks
        self._hop = hop
        self._answer = pb.ExecuteToolResponse(success=True, result={"type_url": codec.TYPE_PREFIX + "json", "value": b"3"})

    async def ExecuteStreamingTool(self, request: Any, context: Any) -> Any:
        for chunk in self._chunks:
            yield chunk

    async def ExecuteTool(self, request: Any, context: Any) -> Any:
        if self._hop is not None:
            await self._hop()
        return self._answer


async def _start_bare(chunks: list[pb.ToolChunk], hop: Callable[[], Awaitable[Any]] | None = None) -> tuple[Any, int]:
    server = grpc.aio.server()
    bridge_pb2_grpc.add_BridgeServiceServicer_to_server(_Bare(chunks, hop), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


_ECHO_CHILD = """
import os, sys
r, w = int(sys.argv[1]), int(sys.argv[2])
while True:
    data = os.read(r, 64)
    if not data:
        break
    os.write(w, data)
"""


class _EchoChild:
    """A child process that writes back each byte it reads: the cheapest process hop."""

    def __init__(self) -> None:
        self.proc, self._to_child, self._from_child = piped_child(_ECHO_CHILD)

    async def round_trip(self) -> None:
        loop = asyncio.get_running_loop()
        back = loop.create_future()

        def readable() -> None:
            os.read(self._from_child, 64)
            if not back.done():
                back.set_result(None)

        loop.add_reader(self._from_child, readable)
        try:
            os.write(self._to_child, b"x")
            await back
        finally:
            loop.remove_reader(self._from_child)

    def close(self) -> None:
        os.close(self._to_child)
        self.proc.wait()
        os.close(self._from_child)


def _request(tool: str, **args: Any) -> pb.ExecuteToolRequest:
    request = pb.ExecuteToolRequest(tool_name=tool)
    for name, value in args.items():
        parameter = request.parameters[name]  # an Any of the bridge's own descriptor pool
        parameter.type_url, parameter.value = codec.TYPE_PREFIX + "int", str(value).encode()
    return request


def _loop_cpu() -> float:
    """CPU seconds the gRPC loop's thread has used: what every server here runs on, the owner's
    one thread for the facade's per-message work (grpc core's poller and the workers aside)."""
    thread = _loop._thread
    assert thread is not None and thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def _stream_rate(
    stub: Any, request: pb.ExecuteToolRequest, n: int, batched: bool = False, cpu: list[float] | None = None
) -> float:
    """Chunks per second; the loop thread's CPU microseconds per chunk go into ``cpu``."""
    started, used = time.perf_counter(), _loop_cpu()
    received = 0
    for chunk in stub.ExecuteStreamingTool(request):
        if chunk.data:
            received += len(codec.decode_value(chunk.data, codec.JSON)) if batched else 1
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append((_loop_cpu() - used) / n * 1e6)
    assert received == n, (received, n)
    return n / elapsed


def _in_process_rate(pool: Pool, n: int) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in pool.stream("numbers", {"n": n}))
    assert count == n
    return n / (time.perf_counter() - started)


def _unary_p50(stub: Any, request: pb.ExecuteToolRequest, calls: int) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.ExecuteTool(request)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


STREAM_REFERENCE = "bare grpcio (asyncio), pre-encoded"
IN_PROCESS = "in-process stream()"
ONE = "facade, one ToolChunk per chunk"
BATCHED = "facade, chunk_batch=256"
UNARY_REFERENCE = "bare grpcio unary (asyncio)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks per one-message-per-chunk stream")
    parser.add_argument("--batched-chunks", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=1_000, help="unary calls per round")
    parser.add_argument("--repeats", type=int, default=3)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.chunks, opts.batched_chunks, opts.calls, opts.repeats = 2_000, 20_000, 200, 1
    n, big = opts.chunks, opts.batched_chunks
    encoded = [
        pb.ToolChunk(
            chunk_id=f"numbers-{i + 1}", data=codec.encode_value({"number": i, "is_last": i == n - 1}, accept_pickle=False)[0]
        )
        for i in range(n)
    ]
    add = _request("add", a=1, b=2)
    pool_add = CallRequest("add", {"a": 1, "b": 2})
    one = _request("numbers", n=n)
    batched = _request("numbers", n=big)
    batched.metadata["chunk_batch"] = "256"
    results: dict[str, dict[str, Any]] = {}
    echo = _EchoChild()
    servers = []
    try:
        with Pool(Numbers, size=1) as pool:
            facade = pool.serve("127.0.0.1:0")
            bare, bare_port = run(_start_bare(encoded))
            echoed, echo_port = run(_start_bare([], echo.round_trip))
            pooled, pool_port = run(_start_bare([], lambda: pool.arun(pool_add)))
            servers += [bare, echoed, pooled]
            stub = {
                name: bridge_pb2_grpc.BridgeServiceStub(grpc.insecure_channel(address))
                for name, address in (
                    ("facade", facade.address),
                    ("bare", f"127.0.0.1:{bare_port}"),
                    ("echo", f"127.0.0.1:{echo_port}"),
                    ("pool", f"127.0.0.1:{pool_port}"),
                )
            }
            workers = [w["pid"] for w in pool.stats()["worker_info"]] + [echo.proc.pid]
            for placement, (owner_cpus, worker_cpus) in placements().items():
                pin(workers, owner_cpus, worker_cpus)
                cpu: dict[str, list[float]] = {ONE: [], STREAM_REFERENCE: [], BATCHED: []}
                streams = interleaved(
                    opts.repeats,
                    {
                        IN_PROCESS: lambda: _in_process_rate(pool, n),
                        ONE: lambda c=cpu[ONE]: _stream_rate(stub["facade"], one, n, cpu=c),
                        STREAM_REFERENCE: lambda c=cpu[STREAM_REFERENCE]: _stream_rate(stub["bare"], one, n, cpu=c),
                        BATCHED: lambda c=cpu[BATCHED]: _stream_rate(stub["facade"], batched, big, batched=True, cpu=c),
                    },
                )
                unary_contenders = {
                    UNARY_REFERENCE: stub["bare"],
                    "bare grpcio + echo through a child process": stub["echo"],
                    "bare grpcio + pool.arun": stub["pool"],
                    "facade ExecuteTool": stub["facade"],
                }
                for contender in unary_contenders.values():
                    _unary_p50(contender, add, max(50, opts.calls // 5))  # warm up in this placement
                unary = interleaved(
                    opts.repeats, {name: (lambda s=s: _unary_p50(s, add, opts.calls)) for name, s in unary_contenders.items()}
                )
                results[placement] = {
                    "chunks_per_s": medians(streams),
                    "loop_cpu_us_per_chunk": medians(cpu),
                    "unary_p50_us": medians(unary),
                    "samples": {**streams, **unary},
                    "cpu_samples": cpu,
                }
            pin(workers, None, None)
    finally:
        pin([], None, None)
        for server in servers:
            run(server.stop(None))
        echo.close()
    for placement, result in results.items():
        print_table(
            f"gRPC stream throughput, small dict chunks, {placement}, median of {opts.repeats}",
            "chunks/s",
            list(result["chunks_per_s"].items()),
            reference=STREAM_REFERENCE,
        )
        print_table(
            f"gRPC loop thread's CPU per chunk, {placement}, median of {opts.repeats}",
            "us/chunk",
            list(result["loop_cpu_us_per_chunk"].items()),
            reference=STREAM_REFERENCE,
            higher_is_better=False,
            ratio_header="bare's / it",
        )
        print_table(
            f"gRPC unary round trip, {placement}, {opts.calls:,} calls per round, median of {opts.repeats} round p50s",
            "p50 us",
            list(result["unary_p50_us"].items()),
            reference=UNARY_REFERENCE,
            ratio_header="p50 / bare's",
        )
    stream_worst = min(
        results.items(),
        key=lambda item: item[1]["chunks_per_s"][ONE] / item[1]["chunks_per_s"][STREAM_REFERENCE],
    )
    unary_worst = max(
        results.items(), key=lambda item: item[1]["unary_p50_us"]["facade ExecuteTool"] / item[1]["unary_p50_us"][UNARY_REFERENCE]
    )
    stream_ratio = stream_worst[1]["chunks_per_s"][ONE] / stream_worst[1]["chunks_per_s"][STREAM_REFERENCE]
    unary_ratio = unary_worst[1]["unary_p50_us"]["facade ExecuteTool"] / unary_worst[1]["unary_p50_us"][UNARY_REFERENCE]
    batched_least = min(result["chunks_per_s"][BATCHED] for result in results.values())
    print(f"\nworst placement, one ToolChunk per chunk: {stream_worst[0]}, {stream_ratio:.2f}x bare grpcio's chunks/s")
    print(f"worst placement, unary: {unary_worst[0]}, facade p50 {unary_ratio:.2f}x bare grpcio's")
    batched_worst = min(results.items(), key=lambda item: item[1]["chunks_per_s"][BATCHED] / item[1]["chunks_per_s"][IN_PROCESS])
    batched_ratio = batched_worst[1]["chunks_per_s"][BATCHED] / batched_worst[1]["chunks_per_s"][IN_PROCESS]
    print(f"least batched rate: {batched_least:,.0f} chunks/s")
    print(f"worst placement, batched: {batched_worst[0]}, {batched_ratio:.2f}x in-process stream()'s chunks/s")
    payload = {
        "benchmark": "grpc_throughput",
        "placements": results,
        "worst": {"one_per_chunk_vs_bare": stream_ratio, "unary_vs_bare": unary_ratio, "batched_vs_in_process": batched_ratio},
    }
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

"""The gRPC facade against bare grpcio, side by side in one run: stream chunks/s and unary p50.

* ``in-process stream()``: what the facade wraps, for scale;
* ``facade, one ToolChunk per chunk``: ``ExecuteStreamingTool`` of small dict chunks;
* ``bare grpcio (asyncio)``: a grpc.aio server-streaming handler on the same loop thread that
  yields pre-encoded ``ToolChunk`` messages -- the transport's own ceiling for one message per chunk;
* ``facade, chunk_batch=256``: the batched mode, up to 256 chunks (those at hand) per message.

Every contender is read by the same synchronous stub of the generated code, in this process.
Unary: ``ExecuteTool`` of a tiny ``add`` against a bare grpc.aio unary handler returning a fixed
response, p50 over interleaved rounds.

Run: ``python -m benchmarks.grpc_throughput [--chunks N] [--repeats R] [--calls C] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage

from snakepit import BaseAdapter, Pool, tool
from snakepit.grpc import bridge_pb2 as pb
from snakepit.grpc import bridge_pb2_grpc, codec
from snakepit.grpc.loop import run

from ._harness import common_options, emit_json, interleaved, medians, print_table


class Numbers(BaseAdapter):
    @tool
    def numbers(self, n: int):
        for i in range(n):
            yield {"number": i, "is_last": i == n - 1}

    @tool
    def add(self, a: int, b: int) -> int:
        return a + b


class _Bare(bridge_pb2_grpc.BridgeServiceServicer):
    """What grpcio itself does with no pool behind it: pre-encoded messages, a fixed answer."""

    def __init__(self, chunks: list[pb.ToolChunk]) -> None:
        self._chunks = chunks
        self._answer = pb.ExecuteToolResponse(success=True, result=AnyMessage(type_url=codec.TYPE_PREFIX + "json", value=b"3"))

    async def ExecuteStreamingTool(self, request: Any, context: Any) -> Any:
        for chunk in self._chunks:
            yield chunk

    async def ExecuteTool(self, request: Any, context: Any) -> Any:
        return self._answer


async def _start_bare(chunks: list[pb.ToolChunk]) -> tuple[Any, int]:
    server = grpc.aio.server()
    bridge_pb2_grpc.add_BridgeServiceServicer_to_server(_Bare(chunks), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _request(tool: str, **args: Any) -> pb.ExecuteToolRequest:
    request = pb.ExecuteToolRequest(tool_name=tool)
    for name, value in args.items():
        request.parameters[name].CopyFrom(AnyMessage(type_url=codec.TYPE_PREFIX + "int", value=str(value).encode()))
    return request


def _stream_rate(stub: Any, request: pb.ExecuteToolRequest, n: int, batched: bool = False) -> float:
    started = time.perf_counter()
    received = 0
    for chunk in stub.ExecuteStreamingTool(request):
        if chunk.data:
            received += len(codec.decode_value(chunk.data, codec.JSON)) if batched else 1
    elapsed = time.perf_counter() - started
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
    encoded = [pb.ToolChunk(chunk_id=f"numbers-{i + 1}", data=codec.encode_value({"number": i, "is_last": i == n - 1}, accept_pickle=False)[0]) for i in range(n)]
    with Pool(Numbers, size=1) as pool:
        facade = pool.serve("127.0.0.1:0")
        bare, bare_port = run(_start_bare(encoded))
        try:
            facade_stub = bridge_pb2_grpc.BridgeServiceStub(grpc.insecure_channel(facade.address))
            bare_stub = bridge_pb2_grpc.BridgeServiceStub(grpc.insecure_channel(f"127.0.0.1:{bare_port}"))
            one = _request("numbers", n=n)
            batched = _request("numbers", n=big)
            batched.metadata["chunk_batch"] = "256"
            streams = interleaved(
                opts.repeats,
                {
                    "in-process stream()": lambda: _in_process_rate(pool, n),
                    "facade, one ToolChunk per chunk": lambda: _stream_rate(facade_stub, one, n),
                    "bare grpcio (asyncio), pre-encoded": lambda: _stream_rate(bare_stub, one, n),
                    "facade, chunk_batch=256": lambda: _stream_rate(facade_stub, batched, big, batched=True),
                },
            )
            add = _request("add", a=1, b=2)
            unary = interleaved(
                opts.repeats,
                {
                    "facade ExecuteTool": lambda: _unary_p50(facade_stub, add, opts.calls),
                    "bare grpcio unary (asyncio)": lambda: _unary_p50(bare_stub, add, opts.calls),
                },
            )
        finally:
            run(bare.stop(None))
    stream_rates, unary_p50 = medians(streams), medians(unary)
    print_table(
        f"gRPC stream throughput, small dict chunks, median of {opts.repeats}", "chunks/s",
        list(stream_rates.items()), reference="bare grpcio (asyncio), pre-encoded",
    )
    print_table(
        f"gRPC unary round trip, {opts.calls:,} calls per round, median of {opts.repeats} round p50s", "p50 us",
        list(unary_p50.items()), reference="bare grpcio unary (asyncio)", higher_is_better=False,
    )
    payload = {"benchmark": "grpc_throughput", "chunks_per_s": stream_rates, "unary_p50_us": unary_p50, "samples": {**streams, **unary}}
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

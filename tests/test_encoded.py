"""A call's ``encode=`` option (values handed back as ``snakepit.Encoded``), and the gRPC facade's
streams, which forward what the workers encoded: chunk by chunk, batched (``accept=pickle`` too),
within ``max_message_mb``, and with a value that cannot be encoded failing where it is."""

from __future__ import annotations

import asyncio
import json
import os
import pickle

import grpc
import pytest
from helpers import Opaque, Toolbox

from snakepit import CallRequest, Encoded, Pool, SnakepitError, tool
from snakepit import _protocol as protocol
from snakepit.grpc import Client, bridge_pb2_grpc
from snakepit.grpc import _codec as codec
from snakepit.grpc import bridge_pb2 as pb
from snakepit.grpc._status import ERROR_METADATA, error_from_json

JSON, OCTETS, PICKLE = "application/json", "application/octet-stream", "application/x-python-pickle"
BIG = 300_000  # above the shared-memory threshold: such values are encoded by the owner


class Encoding(Toolbox):
    thread_safe = True  # its tools keep no state

    @tool
    def burst_then_die(self, n: int):
        """``n`` chunks as fast as they come, then the worker dies at once: the last of them may
        still be queued in its crash-safe queue, in an array being built."""
        for i in range(n):
            yield {"i": i}
        os._exit(9)

    @tool
    def typed_stream(self, values: list):
        yield from values
        yield (1, 2)

    @tool
    def strings(self, n: int, size: int):
        for i in range(n):
            yield str(i).zfill(size)

    @tool
    def small_then(self, size: int):
        yield "small"
        yield "y" * size

    @tool
    def opaque_third(self):
        yield 1
        yield 2
        yield Opaque()
        yield 4


@pytest.fixture(scope="module")
def pool():
    with Pool(Encoding, size=1, start_timeout=30) as pool:
        yield pool


def test_results_and_chunks_come_encoded(pool):
    assert pool.execute("add", {"a": 1, "b": 2}, encode="json") == Encoded(b"3", JSON)
    assert pool.execute("pair", {"p": (1, 2)}, encode="json") == Encoded(b"[1.0,2.0]", JSON)
    pickled = pool.execute("pair", {"p": (1, 2)}, encode="pickle")
    assert pickled.content_type == PICKLE and pickle.loads(pickled.data) == (1.0, 2.0)
    values = [1, "a", None, b"raw", (2, 3), float("nan")]
    assert list(pool.stream("stream_values", {"values": values}, encode="json")) == [
        Encoded(b"1", JSON),
        Encoded(b'"a"', JSON),
        Encoded(b"null", JSON),
        Encoded(b"raw", OCTETS),
        Encoded(b"[2,3]", JSON),
        Encoded(b'"NaN"', JSON),
    ]
    chunks = list(pool.stream("stream_values", {"values": values}, encode="pickle"))
    assert [chunk.content_type for chunk in chunks] == [JSON, JSON, JSON, OCTETS, PICKLE, PICKLE]
    assert pickle.loads(chunks[4].data) == (2, 3)
    seen: list[Encoded] = []
    pool.execute_stream("stream_values", {"values": [1, 2]}, seen.append, encode="json")
    assert seen == [Encoded(b"1", JSON), Encoded(b"2", JSON)]

    async def both() -> tuple[list[Encoded], Encoded]:
        streamed = [chunk async for chunk in pool.astream("count", {"n": 2}, encode="json")]
        return streamed, await pool.aexecute("add", {"a": 5}, encode="pickle")

    streamed, result = asyncio.run(both())
    assert [json.loads(chunk.data)["number"] for chunk in streamed] == [0, 1] and result == Encoded(b"6", JSON)
    with pool.session("encoded") as session:
        assert session.execute("add", {"a": 1}, encode="json") == Encoded(b"2", JSON)
    assert pool.execute("add", {"a": 1}) == 2  # the option is the call's alone


def test_a_bad_encode_option_is_invalid_arguments(pool):
    for bad in ("xml", "JSON", 1, True):
        for call in (
            lambda bad=bad: pool.execute("add", {"a": 1}, encode=bad),
            lambda bad=bad: list(pool.stream("count", {"n": 1}, encode=bad)),
        ):
            with pytest.raises(SnakepitError) as info:
                call()
            assert info.value.reason == "invalid_arguments" and "encode" in info.value.message
    assert pool.execute("add", {"a": 1}) == 2


def test_a_value_that_cannot_be_encoded_ends_the_stream_where_it_is(pool):
    stream = pool.stream("stream_values", {"values": [1, 2, Opaque(), 4]}, encode="json")
    got = []
    with pytest.raises(SnakepitError) as info:
        for chunk in stream:
            got.append(chunk)
    assert got == [Encoded(b"1", JSON), Encoded(b"2", JSON)]
    assert info.value.reason == "serialization_error" and info.value.details["type"] == "Opaque"
    with pytest.raises(SnakepitError) as info:
        pool.execute("echo", {"value": Opaque()}, encode="json")
    assert info.value.reason == "serialization_error"
    assert pool.execute("echo", {"value": Opaque()}, encode="pickle").content_type == PICKLE  # pickled instead
    assert pool.execute("add", {"a": 1}) == 2  # the worker lives on


def test_values_of_a_shared_memory_size_are_encoded_by_the_owner(pool):
    assert protocol.encoded_wire(b"x" * BIG, "json") is None
    assert protocol.encoded_wire("y" * BIG, "json") is None  # too large once encoded
    assert protocol.encoded_wire("y", "json") == b'"y"'  # JSON as a plain bin: no extension hook per chunk
    assert protocol.encoded_wire(b"y", "json") == protocol.Ext(protocol.ENCODED_EXT + 1, b"y")  # a tool's bytes
    assert pool.execute("big", {"size": BIG}, encode="json") == Encoded(b"x" * BIG, OCTETS)
    # A tool's own small bytes are never taken for the worker's JSON, in a result or a stream.
    assert pool.execute("echo", {"value": b"raw"}, encode="json") == Encoded(b"raw", OCTETS)
    assert list(pool.stream("stream_values", {"values": [b"raw", "s"]}, encode="json")) == [
        Encoded(b"raw", OCTETS),
        Encoded(b'"s"', JSON),
    ]
    chunks = list(pool.stream("stream_values", {"values": ["y" * BIG, 1, (1,) * (BIG // 2)]}, encode="pickle"))
    assert chunks[:2] == [Encoded(b'"' + b"y" * BIG + b'"', JSON), Encoded(b"1", JSON)]
    assert chunks[2].content_type == PICKLE and pickle.loads(chunks[2].data) == (1,) * (BIG // 2)


def test_a_remote_client_hands_back_what_the_server_sent():
    with Pool(Toolbox, size=1, start_timeout=30) as pool:
        with Client(pool.serve("127.0.0.1:0", allow_pickle=True).address) as client:
            assert client.execute("pair", {"p": (1, 2)}, encode="json") == Encoded(b"[1.0,2.0]", JSON)
            pickled = client.execute("pair", {"p": (1, 2)}, encode="pickle")
            assert pickled.content_type == PICKLE and pickle.loads(pickled.data) == (1.0, 2.0)
            assert list(client.stream("stream_values", {"values": [1, b"z"]}, encode="pickle")) == [
                Encoded(b"1", JSON),
                Encoded(b"z", OCTETS),
            ]
            with pytest.raises(SnakepitError) as info:
                client.execute("add", {"a": 1}, encode="xml")
            assert info.value.reason == "invalid_arguments"


# -- batched streams ---------------------------------------------------------------------------


def _arrays(values: list[Encoded]) -> list[list[object]]:
    """Each value of a batched stream, decoded: a list of chunks."""
    decoded = [codec.decode_value(value.data, value.content_type) for value in values]
    assert all(type(batch) is list and batch for batch in decoded), decoded
    return decoded


@pytest.mark.parametrize("threads", [1, 3])
def test_a_batched_stream_packs_the_chunks_at_hand_in_order(threads):
    with Pool(Encoding, size=1, threads_per_worker=threads, start_timeout=30) as pool:
        n = 20_000
        with pool.stream("count", {"n": n}, encode="json", batch=64) as stream:
            values = list(stream)
        assert {value.content_type for value in values} == {JSON}
        arrays = _arrays(values)
        assert [chunk["number"] for batch in arrays for chunk in batch] == list(range(n))
        assert max(map(len, arrays)) <= 64
        assert len(arrays) < n / 2  # a fast tool's chunks travel many to a value
        assert stream.result is not None and stream.result.chunks == len(values)  # the values it delivered

        async def asynchronous() -> list[Encoded]:
            return [value async for value in pool.astream("count", {"n": 500}, encode="pickle", batch=7)]

        arrays = _arrays(asyncio.run(asynchronous()))
        assert [chunk["number"] for batch in arrays for chunk in batch] == list(range(500))
        assert max(map(len, arrays)) <= 7


def test_each_chunk_of_a_batch_is_as_it_would_be_alone(pool):
    values = [1, "a", None, b"raw", (2, 3), float("nan"), {"k": [1.5]}]
    batched = [
        item
        for value in pool.stream("stream_values", {"values": values}, encode="json", batch=len(values))
        for item in json.loads(value.data)
    ]
    # JSON arrays, each element what the chunk's own JSON is (a bytes chunk its base64 string).
    assert batched == [1, "a", None, "cmF3", [2, 3], "NaN", {"k": [1.5]}]
    # A client that takes pickles: a chunk JSON does not carry exactly is a pickled list of its own.
    pickled = list(pool.stream("stream_values", {"values": values}, encode="pickle", batch=len(values)))
    items = [item for batch in _arrays(pickled) for item in batch]
    assert items[:5] == [1, "a", None, b"raw", (2, 3)] and items[6] == {"k": [1.5]}
    assert items[5] != items[5]  # NaN, exactly
    assert PICKLE in {value.content_type for value in pickled}
    # Chunks of a shared-memory size are elements too.
    big = list(pool.stream("stream_values", {"values": ["y" * BIG, 1]}, encode="json", batch=8))
    assert [item for batch in _arrays(big) for item in batch] == ["y" * BIG, 1]


def test_chunks_with_metadata_or_final_travel_in_batches_of_their_own(pool):
    with pool.stream("with_final", {"n": 3}, encode="json", batch=16) as stream:
        seen = [(codec.decode_value(value.data, value.content_type), stream.metadata) for value in stream]
    assert seen == [
        ([{"i": 0}], {"seq": 0}),
        ([{"i": 1}], {"seq": 1}),
        ([{"i": 2}], {"seq": 2}),
        ([{"done": True}], {"total": 3}),
    ]
    assert stream.result is not None and stream.result.metadata == {"total": 3} and not stream.result.synthetic_final


def test_a_chunk_that_cannot_be_encoded_ends_a_batched_stream_after_those_before_it(pool):
    got: list[Encoded] = []
    with pytest.raises(SnakepitError) as info:
        for value in pool.stream("opaque_third", encode="json", batch=4):
            got.append(value)
    assert [item for batch in _arrays(got) for item in batch] == [1, 2]
    assert info.value.reason == "serialization_error"
    assert pool.execute("add", {"a": 1}) == 2


def test_bad_batch_options_are_invalid_arguments(pool):
    numpy = pytest.importorskip("numpy")
    values = list(pool.stream("count", {"n": 3}, encode="json", batch=numpy.int64(8)))  # any integer
    assert [chunk["number"] for batch in _arrays(values) for chunk in batch] == [0, 1, 2]
    for bad in (0, -1, True, "8", 2.0, numpy.int64(0)):
        with pytest.raises(SnakepitError) as info:
            list(pool.stream("count", {"n": 1}, encode="json", batch=bad))
        assert info.value.reason == "invalid_arguments" and "batch" in info.value.message
    with pytest.raises(SnakepitError) as info:
        list(pool.stream("count", {"n": 1}, batch=8))  # packs encoded chunks only
    assert info.value.reason == "invalid_arguments" and "encode" in info.value.message
    with pytest.raises(SnakepitError) as info:
        pool.run(CallRequest("add", {"a": 1}, encode="json", batch=8))  # a stream's option
    assert info.value.reason == "invalid_arguments"
    assert pool.execute("add", {"a": 1}) == 2


@pytest.mark.parametrize("batch", [2**64, 10**30])
def test_a_batch_larger_than_any_is_as_many_as_there_are(pool, batch):
    """Beyond what the Call frame's integer holds, too (it raised OverflowError, and a remote
    client's call failed as the server's unexpected error)."""
    values = list(pool.stream("count", {"n": 3}, encode="json", batch=batch))
    assert [chunk["number"] for array in _arrays(values) for chunk in array] == [0, 1, 2]
    with Client(pool.serve("127.0.0.1:0").address) as client:
        values = list(client.stream("count", {"n": 3}, encode="json", batch=batch))
    assert [chunk["number"] for array in _arrays(values) for chunk in array] == [0, 1, 2]


def test_chunks_queued_in_an_array_when_the_worker_dies_are_delivered():
    n = 5_000
    got: list[Encoded] = []
    # A pool of its own: the worker that replaces the dead one is this test's to stop.
    with Pool(Encoding, size=1, start_timeout=30) as pool, pytest.raises(SnakepitError) as info:
        for value in pool.stream("burst_then_die", {"n": n}, encode="json", batch=256):
            got.append(value)
    assert info.value.reason == "worker_crashed"
    assert [chunk["i"] for batch in _arrays(got) for chunk in batch] == list(range(n))


def test_a_remote_client_asks_for_batches():
    with Pool(Toolbox, size=1, start_timeout=30) as pool:
        with Client(pool.serve("127.0.0.1:0").address) as client:
            values = list(client.stream("count", {"n": 300}, encode="json", batch=50))
            arrays = _arrays(values)
            assert [chunk["number"] for batch in arrays for chunk in batch] == list(range(300))
            assert max(map(len, arrays)) <= 50
            with pytest.raises(SnakepitError) as info:
                list(client.stream("count", {"n": 3}, batch=50))
            assert info.value.reason == "invalid_arguments"


# -- the facade's streams ----------------------------------------------------------------------


def _request(tool: str, metadata: dict[str, str] | None = None, **args: object) -> pb.ExecuteToolRequest:
    request = pb.ExecuteToolRequest(tool_name=tool, stream=True)
    for name, value in args.items():
        parameter = request.parameters[name]
        parameter.type_url, parameter.value = codec.TYPE_PREFIX + "json", json.dumps(value).encode()
    request.metadata.update(metadata or {})
    return request


def _read(address: str, request: pb.ExecuteToolRequest) -> tuple[list[pb.ToolChunk], SnakepitError | None]:
    """The chunks received, and the error the stream ended with (if any)."""
    with grpc.insecure_channel(address) as channel:
        call = bridge_pb2_grpc.BridgeServiceStub(channel).ExecuteStreamingTool(request, timeout=30)
        chunks = []
        try:
            for chunk in call:
                chunks.append(chunk)
        except grpc.RpcError:
            trailing = dict(call.trailing_metadata() or ())
            return chunks, error_from_json(trailing[ERROR_METADATA])
        return chunks, None


def _values(chunk: pb.ToolChunk) -> object:
    return codec.decode_value(chunk.data, codec.content_type(chunk.metadata))


@pytest.fixture(scope="module")
def served(pool):
    return pool.serve("127.0.0.1:0", max_message_mb=0.1).address


def test_batched_streams_honour_accept_pickle(served):
    values = [1, [2, 3], "x"]
    plain, error = _read(served, _request("typed_stream", {"chunk_batch": "8"}, values=values))
    assert error is None
    items = [item for chunk in plain if chunk.data for item in json.loads(chunk.data)]
    assert items == [1, [2, 3], "x", [1, 2]]  # a tuple as a list: JSON arrays
    pickled, error = _read(served, _request("typed_stream", {"chunk_batch": "8", "accept": "pickle"}, values=values))
    assert error is None
    batches = [_values(chunk) for chunk in pickled if chunk.data]
    assert [item for batch in batches for item in batch] == [1, [2, 3], "x", (1, 2)]  # exactly, as pickles
    assert codec.PICKLE in {codec.content_type(chunk.metadata) for chunk in pickled if chunk.data}


@pytest.mark.parametrize("batch", [None, "4"])
def test_a_chunk_that_cannot_be_encoded_ends_the_grpc_stream_after_those_before_it(served, batch):
    metadata = {"chunk_batch": batch} if batch else {}
    chunks, error = _read(served, _request("opaque_third", metadata))
    assert error is not None and error.reason == "serialization_error"
    received = [_values(chunk) for chunk in chunks]
    flat = [item for batch_ in received for item in batch_] if batch else received
    assert flat == [1, 2]  # batched: as they were at hand


@pytest.mark.parametrize("batch", [None, "4"])
def test_max_message_mb_holds_for_chunks_the_workers_encoded(served, batch):
    metadata = {"chunk_batch": batch} if batch else {}
    chunks, error = _read(served, _request("small_then", metadata, size=150_000))
    assert protocol.SHARE_THRESHOLD > 150_000  # so the worker encoded it
    assert error is not None and error.reason == "serialization_error" and error.details["limit"] < 150_000
    assert [_values(chunk) for chunk in chunks] in ([["small"]], ["small"], [])


def test_a_batch_too_large_for_a_message_is_split_into_messages_that_fit(served):
    values = [str(i).zfill(200) for i in range(2_000)]  # 400 KB at hand at once, a server of 100 KB messages
    chunks, error = _read(served, _request("strings", {"chunk_batch": "1000"}, n=2_000, size=200))
    assert error is None
    arrays = [json.loads(chunk.data) for chunk in chunks if chunk.data]
    assert [item for batch in arrays for item in batch] == values
    assert max(len(chunk.SerializeToString()) for chunk in chunks) <= 0.1 * 2**20
    assert max(map(len, arrays)) > 1

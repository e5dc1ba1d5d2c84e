"""The gRPC facade against a client compiled at test time from bridge.proto, in its own process
(tests/bridge_driver.py): every rpc, the value rules, each status code, auth, the bind policy,
pickle refusal and cancellation, over a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="the dev extra's grpcio-tools compiles the test client")

from helpers import Faulty, Toolbox, wait_for

from snakepit import Pool, SnakepitError
from snakepit.grpc._status import error_from_json

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("bridge_driver.py")


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> Path:
    """bridge.proto compiled afresh, as any client would, into modules of its own."""
    import grpc_tools
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("client")
    shutil.copy(ROOT / "snakepit" / "grpc" / "bridge.proto", out / "bridge.proto")
    includes = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    assert (
        protoc.main(
            ["protoc", f"-I{out}", f"-I{includes}", f"--python_out={out}", f"--grpc_python_out={out}", str(out / "bridge.proto")]
        )
        == 0
    )
    return out


def bridge(compiled: Path, address: str, *ops: dict, token: str | None = None) -> list[dict]:
    """Run the operations in the compiled client; one result each."""
    if token is not None:
        for op in ops:
            op.setdefault("metadata", []).append(["authorization", f"Bearer {token}"])
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(compiled), address],
        input=json.dumps(list(ops)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def data(chunk: dict) -> bytes:
    return base64.b64decode(chunk["data"])


def snakepit_error(result: dict) -> SnakepitError:
    return error_from_json(result["trailing"]["snakepit-error"])


@pytest.fixture(scope="module")
def served():
    with Pool(Toolbox, size=2, start_timeout=30) as pool:
        server = pool.serve("127.0.0.1:0")
        yield pool, server.address


def test_every_rpc_answers(served, compiled):
    pool, address = served
    sessions = pool.stats()["sessions"]
    ping, tools, opened, got, beat, cleaned, gone, stale, *unimplemented = bridge(
        compiled,
        address,
        {"rpc": "Ping", "request": {"message": "hello"}},
        {"rpc": "InitializeSession", "request": {}},
        {"rpc": "InitializeSession", "request": {"session_id": "s1", "metadata": {"user": "ada"}}},
        {"rpc": "GetSession", "request": {"session_id": "s1"}},
        {"rpc": "Heartbeat", "request": {"session_id": "s1"}},
        {"rpc": "CleanupSession", "request": {"session_id": "s1"}},
        {"rpc": "GetSession", "request": {"session_id": "s1"}},
        {"rpc": "Heartbeat", "request": {"session_id": "s1"}},
        {"rpc": "RegisterTools", "request": {}},
        {"rpc": "GetExposedElixirTools", "request": {}},
        {"rpc": "ExecuteElixirTool", "request": {}},
    )
    assert ping["response"]["message"] == "hello" and "server_time" in ping["response"]
    specs = tools["response"]["available_tools"]
    assert {spec.name for spec in pool.tools()} == set(specs)
    add = specs["add"]
    assert add["parameters"][0] == {"name": "a", "type": "int", "required": True}
    assert add["parameters"][1]["default_value"]["value"] == base64.b64encode(b"1").decode()
    assert specs["count"]["supports_streaming"] is True
    assert opened["response"]["success"] is True
    assert got["response"]["metadata"] == {"user": "ada"} and got["response"]["tool_count"] == len(specs)
    assert beat["response"]["session_valid"] is True
    assert cleaned["response"] == {"success": True, "resources_cleaned": 1}
    assert gone["code"] == "NOT_FOUND" and snakepit_error(gone).reason == "session_not_found"
    assert stale["response"].get("session_valid", False) is False
    assert [result["code"] for result in unimplemented] == ["UNIMPLEMENTED"] * 3
    assert pool.stats()["sessions"] == sessions  # the tool listing opened none, s1 is closed


def test_results_travel_as_json_bytes_or_pickles_by_request(served, compiled):
    _pool, address = served
    as_json, as_bytes, as_pickle, converted, from_binary, correlated = bridge(
        compiled,
        address,
        {"rpc": "ExecuteTool", "request": {"tool_name": "add"}, "params": {"a": ["int", "2"], "b": ["int", "40"]}},
        {"rpc": "ExecuteTool", "request": {"tool_name": "big"}, "params": {"size": ["int", "3"]}},
        {
            "rpc": "ExecuteTool",
            "request": {"tool_name": "pair", "metadata": {"accept": "pickle"}},
            "params": {"p": ["list", "[1, 2]"]},
        },
        {"rpc": "ExecuteTool", "request": {"tool_name": "pair"}, "params": {"p": ["list", "[1, 2]"]}},
        {
            "rpc": "ExecuteTool",
            "request": {"tool_name": "echo"},
            "params": {"value": ["bytes.binary", ""]},
            "binary": {"value": base64.b64encode(b"\x00\xff").decode()},
        },
        {
            "rpc": "ExecuteTool",
            "request": {"tool_name": "add", "metadata": {"correlation_id": "req-7"}},
            "params": {"a": ["int", "1"]},
        },
    )
    response = as_json["response"]
    assert response["success"] is True and base64.b64decode(response["result"]["value"]) == b"42"
    assert response["result"]["type_url"].endswith("snakepit.json") and int(response.get("execution_time_ms", 0)) >= 0
    response = as_bytes["response"]
    assert (
        base64.b64decode(response["binary_result"]) == b"xxx"
        and response["metadata"]["content_type"] == "application/octet-stream"
    )
    response = as_pickle["response"]
    assert response["metadata"]["content_type"] == "application/x-python-pickle"
    assert pickle.loads(base64.b64decode(response["binary_result"])) == (1.0, 2.0)
    assert json.loads(base64.b64decode(converted["response"]["result"]["value"])) == [1.0, 2.0]  # a tuple, as JSON has it
    assert base64.b64decode(from_binary["response"]["binary_result"]) == b"\x00\xff"
    assert correlated["response"]["metadata"]["correlation_id"] == "req-7"


def test_streams_number_their_chunks_and_end_with_exactly_one_final(served, compiled):
    pool, address = served
    synthetic, explicit, raw = bridge(
        compiled,
        address,
        {
            "rpc": "ExecuteStreamingTool",
            "request": {"tool_name": "count", "metadata": {"correlation_id": "c-1"}},
            "params": {"n": ["int", "3"]},
        },
        {"rpc": "ExecuteStreamingTool", "request": {"tool_name": "with_final"}, "params": {"n": ["int", "2"]}},
        {
            "rpc": "ExecuteStreamingTool",
            "request": {"tool_name": "stream_values"},
            "params": {"values": ["list", "[]"]},
            "binary": {},
        },
    )
    chunks = synthetic["chunks"]
    assert [chunk["chunk_id"] for chunk in chunks] == ["count-1", "count-2", "count-3", "count-4"]
    assert [json.loads(data(chunk)) for chunk in chunks[:3]] == [{"number": i, "is_last": i == 2} for i in range(3)]
    final = chunks[-1]
    assert [chunk["is_final"] for chunk in chunks] == [False, False, False, True] and data(final) == b""
    assert final["metadata"]["synthetic_final"] == "true" and final["metadata"]["tool_type"] == "remote"
    assert final["metadata"]["correlation_id"] == "c-1" and int(final["metadata"]["execution_time_ms"]) >= 0
    assert int(final["metadata"]["worker_id"]) in {w["id"] for w in pool.stats()["worker_info"]}
    chunks = explicit["chunks"]
    assert [chunk["is_final"] for chunk in chunks] == [False, False, True]  # the tool's own final chunk
    assert json.loads(data(chunks[-1])) == {"done": True} and "synthetic_final" not in chunks[-1]["metadata"]
    assert [chunk["is_final"] for chunk in raw["chunks"]] == [True]  # no chunk at all: the synthetic final only


def test_chunks_that_arrive_together_still_travel_one_message_each_in_order(served, compiled):
    # Hundreds of quick chunks reach the owner a batch at a time; each is still its own ToolChunk.
    _pool, address = served
    plain, explicit = bridge(
        compiled,
        address,
        {"rpc": "ExecuteStreamingTool", "request": {"tool_name": "count"}, "params": {"n": ["int", "700"]}},
        {"rpc": "ExecuteStreamingTool", "request": {"tool_name": "with_final"}, "params": {"n": ["int", "500"]}},
    )
    chunks = plain["chunks"]
    assert [chunk["chunk_id"] for chunk in chunks] == [f"count-{i}" for i in range(1, 702)]
    assert [json.loads(data(chunk)) for chunk in chunks[:-1]] == [{"number": i, "is_last": i == 699} for i in range(700)]
    assert [chunk["is_final"] for chunk in chunks].count(True) == 1 and chunks[-1]["metadata"]["synthetic_final"] == "true"
    chunks = explicit["chunks"]
    assert [json.loads(data(chunk)) for chunk in chunks] == [{"i": i} for i in range(500)] + [{"done": True}]
    assert [chunk["is_final"] for chunk in chunks].count(True) == 1 and chunks[-1]["is_final"]
    assert "synthetic_final" not in chunks[-1]["metadata"] and chunks[-1]["chunk_id"] == "with_final-501"


def test_batched_streams_pack_the_chunks_at_hand_into_json_arrays(served, compiled):
    _pool, address = served
    [batched] = bridge(
        compiled,
        address,
        {
            "rpc": "ExecuteStreamingTool",
            "request": {"tool_name": "count", "metadata": {"chunk_batch": "100"}},
            "params": {"n": ["int", "250"]},
        },
    )
    chunks = batched["chunks"]
    items = [item for chunk in chunks if data(chunk) for item in json.loads(data(chunk))]
    assert items == [{"number": i, "is_last": i == 249} for i in range(250)]  # all, in order
    assert all(len(json.loads(data(chunk))) <= 100 for chunk in chunks if data(chunk))
    assert len(chunks) < 250 and [chunk["is_final"] for chunk in chunks].count(True) == 1 and chunks[-1]["is_final"]
    [refused] = bridge(
        compiled,
        address,
        {
            "rpc": "ExecuteStreamingTool",
            "request": {"tool_name": "count", "metadata": {"chunk_batch": "lots"}},
            "params": {"n": ["int", "1"]},
        },
    )
    assert refused["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "op, code, reason",
    [
        ({"rpc": "ExecuteTool", "request": {"tool_name": "nope"}}, "NOT_FOUND", "tool_not_found"),
        (
            {"rpc": "ExecuteTool", "request": {"tool_name": "add"}, "params": {"a": ["int", "{not json"]}},
            "INVALID_ARGUMENT",
            "invalid_arguments",
        ),
        (
            {"rpc": "ExecuteTool", "request": {"tool_name": "add"}, "params": {"a": ["int", '"two"']}},
            "INVALID_ARGUMENT",
            "invalid_arguments",
        ),
        ({"rpc": "ExecuteTool", "request": {"tool_name": "unserializable_result"}}, "INVALID_ARGUMENT", "serialization_error"),
        (
            {"rpc": "ExecuteStreamingTool", "request": {"tool_name": "add"}, "params": {"a": ["int", "1"]}},
            "UNIMPLEMENTED",
            "not_streaming",
        ),
        (
            {
                "rpc": "ExecuteTool",
                "request": {"tool_name": "sleep", "metadata": {"timeout_ms": "200"}},
                "params": {"seconds": ["float", "5"]},
            },
            "DEADLINE_EXCEEDED",
            "timeout",
        ),
        (
            {
                "rpc": "ExecuteTool",
                "request": {"tool_name": "add", "metadata": {"affinity": "sideways"}},
                "params": {"a": ["int", "1"]},
            },
            "INVALID_ARGUMENT",
            "invalid_arguments",
        ),
        (
            {"rpc": "ExecuteStreamingTool", "request": {"tool_name": "stream_then_fail"}, "params": {"n": ["int", "2"]}},
            "INTERNAL",
            "tool_exception",
        ),
    ],
)
def test_each_failure_has_its_status_and_the_exact_error(served, compiled, op, code, reason):
    _pool, address = served
    [result] = bridge(compiled, address, op)
    assert result["code"] == code, result
    error = snakepit_error(result)
    assert error.reason == reason and json.loads(result["details"])["reason"] == reason
    if op["request"]["tool_name"] == "stream_then_fail":
        assert [json.loads(data(chunk)) for chunk in result["chunks"]] == [0, 1]  # chunks first, then the error
        assert error.details["type"] == "RuntimeError" and "failed after 2" in error.traceback


def test_a_tool_failure_in_execute_tool_is_an_answer_not_a_status(compiled):
    with Pool(Toolbox, size=2) as pool:
        address = pool.serve("127.0.0.1:0").address
        raised, crashed = bridge(
            compiled,
            address,
            {"rpc": "ExecuteTool", "request": {"tool_name": "fail"}, "params": {"message": ["str", '"boom"']}},
            {"rpc": "ExecuteTool", "request": {"tool_name": "crash"}},
        )
        assert raised["code"] == "OK" and raised["response"].get("success", False) is False
        error = error_from_json(raised["response"]["error_message"])
        assert (error.category, error.reason, error.details["type"]) == ("python_error", "tool_exception", "ValueError")
        assert "boom" in error.message and "raise ValueError" in error.traceback
        error = error_from_json(crashed["response"]["error_message"])
        assert (error.category, error.reason, error.details["exit_code"]) == ("worker", "worker_crashed", 7)
        wait_for(lambda: pool.stats()["workers"] == 2)


def test_a_sessions_metadata_and_birth_live_and_expire_with_the_pools_session(compiled):
    with Pool(Toolbox, size=1, session_ttl=2.0) as pool:
        address = pool.serve("127.0.0.1:0").address
        [opened] = bridge(
            compiled, address, {"rpc": "InitializeSession", "request": {"session_id": "s", "metadata": {"user": "old"}}}
        )
        assert opened["response"]["success"] is True
        wait_for(lambda: pool.stats()["sessions"] == 0, timeout=10)  # expired, and its metadata with it
        _, again, implicit, first, second = bridge(
            compiled,
            address,
            {"rpc": "InitializeSession", "request": {"session_id": "s", "metadata": {"user": "new"}}},
            {"rpc": "GetSession", "request": {"session_id": "s"}},
            {"rpc": "ExecuteTool", "request": {"tool_name": "add", "session_id": "by-call"}, "params": {"a": ["int", "1"]}},
            {"rpc": "GetSession", "request": {"session_id": "by-call"}},
            {"rpc": "GetSession", "request": {"session_id": "by-call"}},
        )
        assert again["response"]["metadata"] == {"user": "new"}
        assert implicit["response"]["success"] is True
        assert first["response"].get("metadata", {}) == {} and first["response"]["created_at"] == second["response"]["created_at"]


def test_pool_refusals_are_their_statuses(compiled):
    with Pool(Faulty, size=1, max_sessions=1, max_queue=0, affinity="strict_fail_fast") as pool:
        address = pool.serve("127.0.0.1:0").address
        quota_ok, quota, _busy_first = bridge(
            compiled,
            address,
            {"rpc": "InitializeSession", "request": {"session_id": "one"}},
            {"rpc": "InitializeSession", "request": {"session_id": "two"}},
            {"rpc": "ExecuteTool", "request": {"tool_name": "pid", "session_id": "one"}},
        )
        assert quota_ok["response"]["success"] is True
        assert quota["code"] == "RESOURCE_EXHAUSTED" and snakepit_error(quota).reason == "session_quota_exceeded"
        import threading

        holder = threading.Thread(target=pool.execute, args=("sleep", {"seconds": 1.5}), kwargs={"session_id": "one"})
        holder.start()
        wait_for(lambda: pool.stats()["busy"] == 1)
        busy, saturated = bridge(
            compiled,
            address,
            {"rpc": "ExecuteTool", "request": {"tool_name": "pid", "session_id": "one"}},
            {"rpc": "ExecuteTool", "request": {"tool_name": "pid"}},
        )
        holder.join(10)
        assert busy["code"] == "UNAVAILABLE" and snakepit_error(busy).reason == "worker_busy"
        assert saturated["code"] == "RESOURCE_EXHAUSTED" and snakepit_error(saturated).reason == "pool_saturated"


def test_a_token_is_required_when_configured_but_not_by_the_health_service(compiled):
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0", token="s3cret").address
        missing, wrong, health = bridge(
            compiled,
            address,
            {"rpc": "Ping", "request": {}},
            {"rpc": "Ping", "request": {}, "metadata": [["authorization", "Bearer guess"]]},
            {"rpc": "health"},
        )
        [right] = bridge(
            compiled,
            address,
            {"rpc": "ExecuteTool", "request": {"tool_name": "add"}, "params": {"a": ["int", "1"]}},
            token="s3cret",
        )
        [stream] = bridge(
            compiled, address, {"rpc": "ExecuteStreamingTool", "request": {"tool_name": "count"}, "params": {"n": ["int", "1"]}}
        )
    assert missing["code"] == wrong["code"] == stream["code"] == "UNAUTHENTICATED"
    assert health == {"code": "OK", "status": "SERVING"}
    assert right["response"]["success"] is True


def test_a_public_address_needs_a_token_mutual_tls_or_insecure():
    with Pool(Toolbox, size=1) as pool:
        with pytest.raises(SnakepitError) as info:
            pool.serve("0.0.0.0:0")
        assert info.value.reason == "invalid_config" and "token" in info.value.message
        with pool.serve("0.0.0.0:0", token="t") as server:
            assert server.port > 0
        with pool.serve("0.0.0.0:0", insecure=True) as server:
            assert server.port > 0
        for loopback in ("localhost:0", "127.0.0.2:0", "[::1]:0"):
            try:
                pool.serve(loopback).stop()
            except SnakepitError as exc:
                assert exc.reason != "invalid_config" or "could not bind" in exc.message


def test_pickled_parameters_are_refused_unless_allowed(compiled):
    payload = base64.b64encode(pickle.dumps((1, 2))).decode()
    op = {
        "rpc": "ExecuteTool",
        "request": {"tool_name": "kinds", "metadata": {"binary_format:value": "pickle"}},
        "binary": {"value": payload},
    }
    with Pool(Toolbox, size=1) as pool:
        refusing = pool.serve("127.0.0.1:0").address
        trusting = pool.serve("127.0.0.1:0", allow_pickle=True).address
        [refused] = bridge(compiled, refusing, dict(op))
        [allowed] = bridge(compiled, trusting, dict(op))
    assert refused["code"] == "PERMISSION_DENIED" and snakepit_error(refused).reason == "serialization_error"
    assert json.loads(base64.b64decode(allowed["response"]["result"]["value"])) == "tuple"


def test_a_client_cancelling_a_stream_cancels_the_tool(compiled):
    with Pool(Faulty, size=1) as pool:
        address = pool.serve("127.0.0.1:0").address
        [read] = bridge(
            compiled,
            address,
            {
                "rpc": "ExecuteStreamingTool",
                "request": {"tool_name": "guarded"},
                "params": {"delay": ["float", "0.01"]},
                "read": 3,
            },
        )
        assert len(read["chunks"]) == 3
        wait_for(lambda: pool.execute("closed", timeout=5) == 1)  # the generator's finally ran
        assert pool.stats()["restarts"] == 0


def test_the_grpc_deadline_bounds_the_call(compiled):
    with Pool(Faulty, size=1) as pool:
        address = pool.serve("127.0.0.1:0").address
        started = time.monotonic()
        [late] = bridge(
            compiled,
            address,
            {"rpc": "ExecuteTool", "request": {"tool_name": "blocked"}, "params": {"how": ["str", '"sleep"']}, "timeout": 0.5},
        )
        assert late["code"] == "DEADLINE_EXCEEDED" and time.monotonic() - started < 10
        wait_for(lambda: pool.execute("counters", timeout=5)["finished_calls"] == 1)  # interrupted in the worker


def test_messages_stay_within_the_servers_limit(compiled):
    with Pool(Faulty, size=1) as pool:
        address = pool.serve("127.0.0.1:0", max_message_mb=1).address
        batched, plain, too_big = bridge(
            compiled,
            address,
            {
                "rpc": "ExecuteStreamingTool",
                "request": {"tool_name": "flood", "metadata": {"chunk_batch": "64"}},
                "params": {"size": ["int", "300000"], "n": ["int", "8"]},
            },
            {
                "rpc": "ExecuteStreamingTool",
                "request": {"tool_name": "flood"},
                "params": {"size": ["int", "300000"], "n": ["int", "8"]},
            },
            {
                "rpc": "ExecuteStreamingTool",
                "request": {"tool_name": "flood"},
                "params": {"size": ["int", "2000000"], "n": ["int", "1"]},
            },
        )
        arrays = [json.loads(data(chunk)) for chunk in batched["chunks"] if data(chunk)]
        assert [len(base64.b64decode(item)) for array in arrays for item in array] == [300_000] * 8  # all, split to fit
        assert len(arrays) > 1 and all(len(data(chunk)) <= 1 << 20 for chunk in batched["chunks"])
        assert [len(data(chunk)) for chunk in plain["chunks"]] == [300_000] * 8 + [0]
        assert too_big["code"] == "INVALID_ARGUMENT" and snakepit_error(too_big).reason == "serialization_error"


def test_timeout_ms_is_checked_even_under_a_grpc_deadline(compiled):
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0").address
        results = bridge(
            compiled,
            address,
            *(
                {
                    "rpc": "ExecuteTool",
                    "request": {"tool_name": "add", "metadata": {"timeout_ms": value}},
                    "params": {"a": ["int", "1"]},
                    "timeout": 10,
                }
                for value in ("0", "-100", "soon")
            ),
        )
        assert [(result["code"], snakepit_error(result).reason) for result in results] == [
            ("INVALID_ARGUMENT", "invalid_arguments")
        ] * 3


def test_a_taken_or_unusable_address_is_refused():
    with Pool(Toolbox, size=1) as pool:
        taken = pool.serve("127.0.0.1:0").address
        for address in (taken, "unix:/nonexistent-dir/snakepit.sock"):
            with pytest.raises(SnakepitError) as info:
                pool.serve(address)
            assert info.value.reason == "invalid_config" and address in info.value.message


def test_a_string_json_cannot_carry_is_refused_or_pickled_by_request(compiled):
    # os.fsdecode makes such strings of file names that are not UTF-8
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0").address
        plain, pickled = bridge(
            compiled,
            address,
            {"rpc": "ExecuteTool", "request": {"tool_name": "undecodable_name"}},
            {"rpc": "ExecuteTool", "request": {"tool_name": "undecodable_name", "metadata": {"accept": "pickle"}}},
        )
        assert plain["code"] == "INVALID_ARGUMENT" and snakepit_error(plain).reason == "serialization_error"
        assert pickle.loads(base64.b64decode(pickled["response"]["binary_result"])) == os.fsdecode(b"caf\xe9.txt")


def test_closing_the_pool_stops_its_servers(compiled):
    pool = Pool(Toolbox, size=1).start()
    address = pool.serve("127.0.0.1:0").address
    assert bridge(compiled, address, {"rpc": "Ping", "request": {}})[0]["code"] == "OK"
    pool.close()
    assert bridge(compiled, address, {"rpc": "Ping", "request": {}, "timeout": 2})[0]["code"] in (
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    )


def test_an_unauthenticated_call_is_refused_before_its_body_is_read(monkeypatch):
    """grpc.aio reads and deserializes a unary request before any handler runs: a refusal must
    not be of the method's kind, or anyone who connects makes the server take in whole messages."""
    import grpc

    from snakepit.grpc import bridge_pb2 as pb

    decoded = []
    original = pb.ExecuteToolRequest.FromString

    def counting(data: bytes):
        decoded.append(len(data))
        return original(data)

    monkeypatch.setattr(pb.ExecuteToolRequest, "FromString", staticmethod(counting))
    large = pb.ExecuteToolRequest(tool_name="echo", binary_parameters={"value": b"x" * (8 << 20)})
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0", token="s3cret").address
        limits = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(address, limits) as channel:
            call = channel.unary_unary("/snakepit.bridge.BridgeService/ExecuteTool")  # raw bytes in and out
            stream = channel.unary_stream("/snakepit.bridge.BridgeService/ExecuteStreamingTool")
            codes = []
            for body in (large.SerializeToString(), b"\xff" * 4096):  # the second would not even decode
                with pytest.raises(grpc.RpcError) as refused:
                    call(body, timeout=30)
                codes.append(refused.value.code())
            with pytest.raises(grpc.RpcError) as refused:
                list(stream(large.SerializeToString(), timeout=30))
            codes.append(refused.value.code())
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
            assert decoded == []  # not one request was deserialized
            authorized = pb.ExecuteToolResponse.FromString(
                call(large.SerializeToString(), metadata=[("authorization", "Bearer s3cret")], timeout=30)
            )
            assert authorized.success and decoded == [large.ByteSize()]  # the wrapper is the one in use


def _v6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_an_address_another_server_holds_is_refused_whatever_name_it_is_given():
    with Pool(Toolbox, size=1) as first, Pool(Toolbox, size=1) as second:
        port = first.serve("127.0.0.1:0").port
        for taken in (f"localhost:{port}", f"127.0.0.1:{port}"):
            with pytest.raises(SnakepitError) as info:
                second.serve(taken)
            assert info.value.reason == "invalid_config" and "127.0.0.1" in info.value.message
        if _v6_loopback():  # the other loopback: localhost names it too
            port = first.serve("[::1]:0").port
            with pytest.raises(SnakepitError) as info:
                second.serve(f"localhost:{port}")
            assert info.value.reason == "invalid_config" and "::1" in info.value.message
        assert second.stats()["workers"] == 1 and not second._on_close
        import socket

        if _v6_loopback():  # refused for its second address, nothing of the first is left listening
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        # localhost with port 0: one port for each of its addresses, all served
        server = second.serve("localhost:0")
        hosts = ["127.0.0.1", "[::1]"] if _v6_loopback() else ["127.0.0.1"]
        from snakepit.grpc import Client

        for host in hosts:
            with Client(f"{host}:{server.port}") as client:
                assert client.execute("add", {"a": 1}) == 2


def test_parameters_nested_too_deep_are_invalid_argument_with_the_pools_reason(compiled):
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0").address
        deep, very_deep, shallow = bridge(
            compiled,
            address,
            *(
                {"rpc": "ExecuteTool", "request": {"tool_name": "echo"}, "params": {"value": ["list", "[" * n + "]" * n]}}
                for n in (1_000, 100_000, 50)
            ),
        )
        with pytest.raises(SnakepitError) as in_process:
            pool.execute("echo", {"value": json.loads("[" * 900 + "]" * 900)})
    for refused in (deep, very_deep):
        assert refused["code"] == "INVALID_ARGUMENT", refused
        assert snakepit_error(refused).reason == "serialization_error" == in_process.value.reason
    assert shallow["code"] == "OK" and json.loads(base64.b64decode(shallow["response"]["result"]["value"])) == json.loads(
        "[" * 50 + "]" * 50
    )


def test_a_unix_socket_another_server_listens_on_is_refused_a_left_over_one_replaced(tmp_path):
    import socket

    path = tmp_path / "pool.sock"
    with Pool(Toolbox, size=1) as first, Pool(Toolbox, size=1) as second:
        first.serve(f"unix:{path}")
        with pytest.raises(SnakepitError) as info:
            second.serve(f"unix:{path}")
        assert info.value.reason == "invalid_config" and "listens" in info.value.message
        from snakepit.grpc import Client

        with Client(f"unix:{path}") as client:  # still the first pool's
            assert client.execute("state")["pid"] == first.stats()["worker_info"][0]["pid"]
    left_over = tmp_path / "left.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # a socket file nobody listens on any more
        dead.bind(str(left_over))
    with Pool(Toolbox, size=1) as pool:
        pool.serve(f"unix:{left_over}")
        with pytest.raises(SnakepitError) as info:
            pool.serve(f"unix:{tmp_path}/no-such-directory/pool.sock")
        assert info.value.reason == "invalid_config" and "no directory" in info.value.message


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:65536", "localhost:-1", "127.0.0.1:http", "nocolon"])
def test_an_address_that_is_no_host_and_port_is_refused(address):
    with Pool(Toolbox, size=1) as pool:
        with pytest.raises(SnakepitError) as info:
            pool.serve(address)
        assert info.value.reason == "invalid_config"


def test_tls_files_that_cannot_be_read_are_invalid_config(tmp_path):
    from snakepit.grpc import TLS

    with Pool(Toolbox, size=1) as pool:
        with pytest.raises(SnakepitError) as info:
            pool.serve("127.0.0.1:0", tls=TLS(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")), token="t")
        assert info.value.reason == "invalid_config" and "key.pem" in info.value.message


def test_the_bearer_scheme_is_case_insensitive_the_token_is_not(compiled):
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0", token="s3cret").address
        lower, upper, wrong_case = bridge(
            compiled,
            address,
            *(
                {"rpc": "Ping", "request": {}, "metadata": [["authorization", value]]}
                for value in ("bearer s3cret", "BEARER s3cret", "Bearer S3CRET")
            ),
        )
    assert (lower["code"], upper["code"], wrong_case["code"]) == ("OK", "OK", "UNAUTHENTICATED")

"""Snakepit's own clients, unchanged: stubs generated at test time from Snakepit v0.13.0's
``.proto`` (vendored in tests/snakepit_v0_13), in this very process beside ``snakepit.grpc``,
driving every rpc with Snakepit's encodings and checking the decodings its client code makes
(``lib/snakepit/grpc/client_impl.ex``, ``PythonTranslation``, its ``TypeSerializer``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="the dev extra's grpcio-tools compiles Snakepit's stubs")

import grpc
from google.protobuf import any_pb2, descriptor_pb2
from helpers import Toolbox, await_for, wait_for

from snakepit import Pool, SnakepitError
from snakepit.grpc import Client
from snakepit.grpc._telemetry import Controls

ROOT = Path(__file__).resolve().parents[1]
VENDORED = Path(__file__).with_name("snakepit_v0_13") / "snakepit_bridge.proto"
OURS = ROOT / "snakepit" / "grpc" / "bridge.proto"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"  # how Snakepit's Elixir client types every parameter
BIG = 70 * 1024 * 1024


def _protoc(*args: str) -> None:
    import grpc_tools
    from grpc_tools import protoc

    includes = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    assert protoc.main(["protoc", f"-I{includes}", *args]) == 0


def _descriptor(proto: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    target = out / f"{proto.stem}.pb"
    _protoc(f"-I{proto.parent}", f"--descriptor_set_out={target}", str(proto))
    [file] = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes()).file
    return file


def _shape(file: descriptor_pb2.FileDescriptorProto) -> dict:
    """Everything of a .proto that the wire depends on, by name: each message's fields (number,
    type, label, type name, oneof), nested maps, each rpc and its streaming flags."""

    def message(m: descriptor_pb2.DescriptorProto) -> dict:
        return {
            "fields": {
                f.name: (
                    f.number,
                    f.type,
                    f.label,
                    f.type_name,
                    m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
                )
                for f in m.field
            },
            "nested": {n.name: message(n) for n in m.nested_type},
            "map_entry": m.options.map_entry,
        }

    return {
        "package": file.package,
        "dependencies": sorted(file.dependency),
        "messages": {m.name: message(m) for m in file.message_type},
        "enums": {e.name: [(v.name, v.number) for v in e.value] for e in file.enum_type},
        "services": {
            s.name: {r.name: (r.input_type, r.output_type, r.client_streaming, r.server_streaming) for r in s.method}
            for s in file.service
        },
    }


def test_bridge_proto_is_snakepits(tmp_path):
    ours, theirs = _shape(_descriptor(OURS, tmp_path)), _shape(_descriptor(VENDORED, tmp_path))
    assert ours["services"] == theirs["services"]
    assert ours["messages"].keys() == theirs["messages"].keys()
    for name in theirs["messages"]:
        assert ours["messages"][name] == theirs["messages"][name], name
    assert ours == theirs
    assert "StreamTelemetry" in ours["services"]["BridgeService"]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """Snakepit's own generated modules (``snakepit_bridge_pb2``), imported into this process:
    their messages live in protobuf's default pool, where ours must not be."""
    out = tmp_path_factory.mktemp("snakepit_stubs")
    _protoc(f"-I{VENDORED.parent}", f"--python_out={out}", f"--grpc_python_out={out}", str(VENDORED))
    sys.path.insert(0, str(out))
    try:
        import snakepit_bridge_pb2 as pb
        import snakepit_bridge_pb2_grpc as pb_grpc
    finally:
        sys.path.remove(str(out))
    return pb, pb_grpc


@pytest.fixture(scope="module")
def served():
    with Pool(Toolbox, size=2, start_timeout=30) as pool:
        yield pool, pool.serve("127.0.0.1:0").address


def _channel(address: str, *options: tuple[str, int]) -> grpc.Channel:
    """A channel without a message limit, as Elixir's."""
    unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    return grpc.insecure_channel(address, [*unlimited, *options])


def _stub(channel: grpc.Channel):
    """A BridgeService stub of Snakepit's own (after the ``stubs`` fixture has imported them)."""
    return sys.modules["snakepit_bridge_pb2_grpc"].BridgeServiceStub(channel)


@pytest.fixture(scope="module")
def bridge(stubs, served):
    pb, _ = stubs
    with _channel(served[1]) as channel:
        yield pb, _stub(channel)


def _request(pb, tool: str, **params):
    """A request as Snakepit's Elixir client encodes one: each parameter a StringValue-typed Any
    whose value is the raw JSON text, and correlation_id in the request's metadata."""
    request = pb.ExecuteToolRequest(tool_name=tool)
    for name, value in params.items():
        request.parameters[name].CopyFrom(any_pb2.Any(type_url=STRING_VALUE, value=json.dumps(value).encode()))
    return request


def _decoded(response):
    """The result as Snakepit's client decodes it: Any.value parsed as JSON, else raw bytes;
    a non-empty binary_result as ("binary", bytes)."""
    if response.binary_result:
        return ("binary", response.binary_result)
    try:
        return json.loads(response.result.value)
    except ValueError:
        return response.result.value


def _translated(error_message: str) -> tuple[str, str, dict]:
    """What PythonTranslation.from_error_message needs: a JSON object with string type and
    message (else the Elixir side gets the raw string)."""
    payload = json.loads(error_message)
    assert isinstance(payload, dict)
    assert isinstance(payload["type"], str) and isinstance(payload["message"], str), payload
    return payload["type"], payload["message"], payload


def test_snakepits_stubs_and_ours_live_in_one_process(stubs, served):
    pb, _ = stubs
    assert pb.DESCRIPTOR.package == "snakepit.bridge"  # the same names as ours, in the default pool
    from snakepit.grpc import bridge_pb2

    assert bridge_pb2.PingRequest is not pb.PingRequest
    with Client(served[1]) as client:
        assert client.execute("add", {"a": 2, "b": 3}) == 5


def test_every_rpc_answers_snakepits_client(bridge):
    pb, stub = bridge
    assert stub.Ping(pb.PingRequest(message="hi")).message == "hi"
    opened = stub.InitializeSession(pb.InitializeSessionRequest(session_id="wire-s", metadata={"user": "u1"}))
    assert opened.success and "add" in opened.available_tools
    got = stub.GetSession(pb.GetSessionRequest(session_id="wire-s"))
    assert got.metadata["user"] == "u1" and got.created_at.seconds > 0
    assert stub.Heartbeat(pb.HeartbeatRequest(session_id="wire-s")).session_valid
    request = _request(pb, "add", a=2, b=3)
    request.session_id = "wire-s"
    assert _decoded(stub.ExecuteTool(request)) == 5
    chunks = list(stub.ExecuteStreamingTool(_request(pb, "count", n=3)))
    assert [json.loads(c.data) for c in chunks[:3]] == [{"number": i, "is_last": i == 2} for i in range(3)]
    assert chunks[-1].is_final
    assert stub.CleanupSession(pb.CleanupSessionRequest(session_id="wire-s")).resources_cleaned == 1
    for rpc, message in (
        (stub.RegisterTools, pb.RegisterToolsRequest()),
        (stub.GetExposedElixirTools, pb.GetExposedElixirToolsRequest()),
        (stub.ExecuteElixirTool, pb.ExecuteElixirToolRequest()),
    ):
        with pytest.raises(grpc.RpcError) as info:
            rpc(message)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_non_finite_floats_as_snakepits_serializer_sends_them(bridge):
    pb, stub = bridge
    for text, expected in (('"NaN"', math.nan), ('"Infinity"', math.inf), ('"-Infinity"', -math.inf)):
        request = pb.ExecuteToolRequest(tool_name="typed_kinds")
        request.parameters["text"].CopyFrom(any_pb2.Any(type_url="type.googleapis.com/snakepit.string", value=b'"t"'))
        request.parameters["number"].CopyFrom(any_pb2.Any(type_url="type.googleapis.com/snakepit.float", value=text.encode()))
        response = stub.ExecuteTool(request)
        assert response.success, response.error_message
        assert _decoded(response)[:2] == ["str", "float"]  # the tool got a float
        # The float itself comes back as Snakepit sends one: nested, null; alone, its string.
        assert _decoded(response)[2] is None
        echo = pb.ExecuteToolRequest(tool_name="echo")
        echo.parameters["value"].CopyFrom(any_pb2.Any(type_url="type.googleapis.com/snakepit.float", value=text.encode()))
        back = stub.ExecuteTool(echo)
        assert back.result.type_url == "type.googleapis.com/snakepit.float"
        assert back.result.value == text.encode()
        assert (
            math.isnan(float(json.loads(back.result.value)))
            if math.isnan(expected)
            else float(json.loads(back.result.value)) == expected
        )
    # Only under a .float type: elsewhere "NaN" is the string it says.
    assert _decoded(stub.ExecuteTool(_request(pb, "echo", value="NaN"))) == "NaN"


def test_errors_carry_the_shape_snakepits_translation_needs(bridge):
    pb, stub = bridge
    response = stub.ExecuteTool(_request(pb, "fail", message="boom"))
    assert not response.success
    kind, message, payload = _translated(response.error_message)
    assert (kind, message) == ("ValueError", "boom")
    assert payload["snakepit_message"] == "tool 'fail' raised ValueError: boom"
    assert isinstance(payload["stacktrace"], list) and all(isinstance(line, str) for line in payload["stacktrace"])
    assert any("raise ValueError" in line for line in payload["stacktrace"])
    assert payload["context"] == {"tool_name": "fail"}
    assert payload["details"]["type"] == "ValueError"

    with Pool(Toolbox, size=1, start_timeout=30) as own, _channel(own.serve("127.0.0.1:0").address) as channel:
        died = _stub(channel).ExecuteTool(_request(pb, "kill_self"))
    kind, message, payload = _translated(died.error_message)
    assert kind == "WorkerCrashed" and "died" in message and payload["reason"] == "worker_crashed"

    with pytest.raises(grpc.RpcError) as info:  # refused before any tool ran: a status, same JSON
        stub.ExecuteTool(_request(pb, "no_such_tool"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    kind, _, payload = _translated(info.value.details())
    assert kind == "ToolNotFound" and payload["context"] == {"tool_name": "no_such_tool"}


def test_bytes_results_leave_result_unset(bridge):
    pb, stub = bridge
    response = stub.ExecuteTool(_request(pb, "big", size=10))
    assert response.success and not response.HasField("result")
    assert _decoded(response) == ("binary", b"x" * 10)  # {:binary, bin}, not {:binary, bin, ""}


def test_binary_parameters_without_an_any(bridge):
    pb, stub = bridge
    request = pb.ExecuteToolRequest(tool_name="echo")
    request.binary_parameters["value"] = b"\x00\xffpixels"
    assert _decoded(stub.ExecuteTool(request)) == ("binary", b"\x00\xffpixels")


def test_chunk_metadata_reaches_tool_chunks(bridge, served):
    pb, stub = bridge
    chunks = list(stub.ExecuteStreamingTool(_request(pb, "with_final", n=2)))
    assert [json.loads(c.data) for c in chunks] == [{"i": 0}, {"i": 1}, {"done": True}]
    assert [c.metadata["seq"] for c in chunks[:2]] == ["0", "1"]
    final = chunks[-1]
    assert final.is_final and final.metadata["total"] == "2"
    assert json.loads(final.metadata["snakepit-metadata"]) == {"total": 2}
    assert final.metadata["worker_id"] and final.metadata["correlation_id"]  # the server's keys beside the tool's
    # Batched: a chunk with metadata travels alone, with its own.
    request = _request(pb, "with_final", n=3)
    request.metadata["chunk_batch"] = "8"
    batched = list(stub.ExecuteStreamingTool(request))
    assert [json.loads(c.data) for c in batched] == [[{"i": 0}], [{"i": 1}], [{"i": 2}], [{"done": True}]]
    assert [c.metadata.get("seq") for c in batched] == ["0", "1", "2", None]
    # The Python client gives the pool's own StreamResult.metadata and correlation id.
    with Client(served[1]) as client:
        stream = client.stream("with_final", {"n": 2}, correlation_id="wire-corr")
        seen = [(value, stream.metadata) for value in stream]
        assert seen == [({"i": 0}, {"seq": 0}), ({"i": 1}, {"seq": 1}), ({"done": True}, {"total": 2})]
        assert stream.result is not None
        assert stream.result.metadata == {"total": 2} and stream.result.correlation_id == "wire-corr"


def test_the_correlation_header(bridge):
    pb, stub = bridge
    header = (("x-snakepit-correlation-id", "sp-0123456789abcdef01234567"),)
    response = stub.ExecuteTool(_request(pb, "add", a=1), metadata=header)
    assert response.metadata["correlation_id"] == "sp-0123456789abcdef01234567"
    request = _request(pb, "add", a=1)
    request.metadata["correlation_id"] = "from-the-request"
    assert stub.ExecuteTool(request, metadata=header).metadata["correlation_id"] == "from-the-request"
    chunks = list(stub.ExecuteStreamingTool(_request(pb, "count", n=1), metadata=header))
    assert chunks[-1].metadata["correlation_id"] == "sp-0123456789abcdef01234567"


def test_a_70_mb_value_fits_the_default_limit(bridge, served):
    pb, stub = bridge
    request = pb.ExecuteToolRequest(tool_name="echo")
    request.binary_parameters["value"] = b"v" * BIG
    response = stub.ExecuteTool(request)
    assert response.success and len(response.binary_result) == BIG
    del request, response
    with Client(served[1]) as client:
        assert len(client.execute("big", {"size": BIG})) == BIG


def test_reflection_v1_and_v1alpha(served):
    from grpc_reflection.v1alpha import reflection_pb2

    with grpc.insecure_channel(served[1]) as channel:
        for version in ("v1", "v1alpha"):
            info = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            asked = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="snakepit.bridge.BridgeService"),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
            ]
            services, bridge_file, reflection_file = list(info(iter(asked), timeout=10))
            names = {s.name for s in services.list_services_response.service}
            assert {
                "snakepit.bridge.BridgeService",
                "grpc.health.v1.Health",
                f"grpc.reflection.{version}.ServerReflection",
            } <= names
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in bridge_file.file_descriptor_response.file_descriptor_proto
            ]
            [bridge] = [f for f in files if f.package == "snakepit.bridge"]
            assert "StreamTelemetry" in [m.name for m in bridge.service[0].method]
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in reflection_file.file_descriptor_response.file_descriptor_proto
            ]
            assert f"grpc.reflection.{version}" in [f.package for f in files]


# -- StreamTelemetry ------------------------------------------------------------------------------


class _Telemetry:
    """A StreamTelemetry call as Snakepit's Elixir side makes one: a toggle on first, then
    whatever control it sends; events read on a thread of their own into a queue."""

    def __init__(self, pb, stub) -> None:
        self.pb = pb
        self._controls: queue.SimpleQueue = queue.SimpleQueue()
        self._controls.put(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=True)))
        self.call = stub.StreamTelemetry(iter(self._controls.get, None))
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.put(event)
        except grpc.RpcError as error:
            self.events.put(error)
        self.events.put(None)

    def control(self, message) -> None:
        self._controls.put(message)

    def until(self, predicate, timeout: float = 30.0) -> list:
        """Events up to and including the first for which ``predicate`` holds."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            assert event is not None and not isinstance(event, grpc.RpcError), (event, seen)
            seen.append(event)
            if predicate(event):
                return seen

    def close(self) -> None:
        self._controls.put(None)
        self.call.cancel()
        self._reader.join(10)


def _name(event) -> str:
    return ".".join(event.event_parts)


def test_stream_telemetry_sends_tool_and_pool_events(bridge):
    pb, stub = bridge
    telemetry = _Telemetry(pb, stub)
    try:
        # The subscription is live once the workers hear of it: call until a span comes back.
        request = _request(pb, "measured")
        request.metadata["correlation_id"] = "tel-1"
        seen = []

        def spans_arrived() -> bool:
            assert stub.ExecuteTool(request).success
            try:
                seen.extend(telemetry.until(lambda e: _name(e) == "tool.execution.exception", timeout=2))
            except queue.Empty:
                return False
            return True

        wait_for(spans_arrived, timeout=30)
        names = {_name(e) for e in seen if e.correlation_id == "tel-1"}
        assert {"tool.execution.start", "tool.execution.stop", "tool.execution.exception"} <= names
        assert "snakepit.telemetry.loaded" in names  # a tool's own name, under snakepit's
        stop = next(e for e in seen if _name(e) == "tool.execution.stop")
        assert stop.measurements["duration"].WhichOneof("value") == "int_value"  # ns, as Snakepit's spans
        assert stop.measurements["duration_ms"].WhichOneof("value") == "float_value"
        assert stop.metadata["tool"] == "measured" and stop.metadata["operation"] == "work"
        assert stop.metadata["step"] == "1"  # the span's attributes, as strings
        assert int(stop.metadata["worker_id"]) >= 1 and stop.timestamp_ns > 0
        failed = next(e for e in seen if _name(e) == "tool.execution.exception")
        assert (failed.metadata["error_type"], failed.metadata["error_message"]) == ("ValueError", "bad input")

        # Deny first: spans' starts no longer come; the rest still does.
        telemetry.control(pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=["tool.*"], deny=["*.start"])))

        def starts_denied() -> bool:
            request.metadata["correlation_id"] = f"tel-{time.monotonic_ns()}"
            assert stub.ExecuteTool(request).success
            got = telemetry.until(
                lambda e: e.correlation_id == request.metadata["correlation_id"] and _name(e) == "tool.execution.exception"
            )
            mine = [_name(e) for e in got if e.correlation_id == request.metadata["correlation_id"]]
            return mine == ["tool.execution.stop", "tool.execution.exception"]

        wait_for(starts_denied, timeout=30)
    finally:
        telemetry.close()


def test_pool_events_reach_remote_subscribers(stubs):
    pb, _ = stubs
    with Pool(Toolbox, size=1, start_timeout=30) as pool, _channel(pool.serve("127.0.0.1:0").address) as channel:
        stub = _stub(channel)
        telemetry = _Telemetry(pb, stub)
        try:
            telemetry.control(pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=["snakepit.worker_*"])))

            # Live once the server has the subscription: a Ping after the stream's start orders nothing,
            # so crash workers until the events come.
            def exit_seen() -> list:
                assert not stub.ExecuteTool(_request(pb, "crash", code=3)).success  # a worker dies, another starts
                try:
                    return telemetry.until(lambda e: _name(e) == "snakepit.worker_ready", timeout=10)
                except queue.Empty:
                    return []

            seen = wait_for(exit_seen, timeout=60)
            exits = [e for e in seen if _name(e) == "snakepit.worker_exit"]
            assert exits and exits[0].measurements["exit_code"].int_value == 3
            assert exits[0].metadata["expected"] == "false"
            assert all(_name(e).startswith("snakepit.worker_") for e in seen)
        finally:
            telemetry.close()


def test_a_slow_subscriber_loses_events_not_the_pool(bridge, served):
    """A subscriber that does not read: its buffer fills, the rest is dropped and counted; the
    pool and the tools go on at their pace."""
    pb, _ = bridge
    # A window that stays small (grpc would grow it to hold whatever the link allows).
    channel = _channel(served[1], ("grpc.http2.bdp_probe", 0))
    controls: queue.SimpleQueue = queue.SimpleQueue()
    controls.put(pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=["snakepit.telemetry.*"])))
    call = _stub(channel).StreamTelemetry(iter(controls.get, None))
    try:
        with Client(served[1]) as client:
            # Until the subscription is live, the worker sends nothing: go on until it has lost some.
            def dropped_some() -> bool:
                started = time.monotonic()
                assert client.execute("chatty", {"n": 5000}) == 5000
                assert time.monotonic() - started < 30  # not held up by the subscriber
                return True

            for _ in range(3):
                dropped_some()
        reported = None
        deadline = time.monotonic() + 60
        for event in call:
            if _name(event) == "snakepit.telemetry.dropped":
                reported = event
                break
            assert time.monotonic() < deadline
        assert reported is not None and reported.measurements["count"].int_value > 0
    finally:
        controls.put(None)
        call.cancel()
        channel.close()


def test_telemetry_controls_follow_snakepits_semantics():
    controls = Controls()
    assert controls.admits("tool.execution.stop")
    controls.set_filter(allow=["tool.*"], deny=["tool.execution.start"])
    assert controls.admits("tool.execution.stop") and not controls.admits("tool.execution.start")
    assert not controls.admits("snakepit.worker_exit")  # not allowed
    controls.set_filter(allow=[], deny=[])
    controls.sampling_rate = 0.0
    assert not any(controls.admits("tool.execution.stop") for _ in range(100))
    controls.sampled = ("python.*",)  # the rate applies only to the events its patterns match
    assert controls.admits("tool.execution.stop") and not controls.admits("python.memory.sampled")
    controls.enabled = False
    assert not controls.admits("tool.execution.stop")


@contextlib.contextmanager
def _calling(address: str, correlation_id: str, token: str | None = None) -> Iterator[None]:
    """``measured`` called again and again (on a thread, by a client of its own) while the block
    runs: a subscription's events come once it is live, whenever that is."""
    stop = threading.Event()

    def keep_calling() -> None:
        with Client(address, token=token) as client:
            while not stop.is_set():
                client.execute("measured", correlation_id=correlation_id)
                stop.wait(0.05)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        yield
    finally:
        stop.set()
        caller.join()


def test_the_python_client_subscribes(served):
    _, address = served
    with Client(address) as client, client.telemetry(allow=["tool.execution.*"]) as events:
        with _calling(address, "py-sub"):
            event = next(events)
            assert event["name"].startswith("tool.execution.") and event["correlation_id"] == "py-sub"
            assert event["metadata"]["tool"] == "measured"
            events.control(deny=["tool.execution.start"], allow=["tool.*"])
            # Once the control has reached the server, no start comes: a run of other events only.
            run = 0
            deadline = time.monotonic() + 30
            while run < 8:
                assert time.monotonic() < deadline
                run = run + 1 if next(events)["name"] != "tool.execution.start" else 0


def test_snakepit_events_prints_a_json_line_per_event(served):
    """``snakepit events --address``: the served pool's telemetry on stdout, one JSON line each."""
    import subprocess

    _, address = served
    cli = subprocess.Popen(
        [sys.executable, "-m", "snakepit", "events", "--address", address, "--allow", "tool.execution.*", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        with _calling(address, "cli-events"):  # until the subscription is live and has printed its two events
            out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and all(line["name"].startswith("tool.execution.") for line in lines)
    assert all(line["correlation_id"] == "cli-events" and line["metadata"]["tool"] == "measured" for line in lines)


def test_subscribers_are_their_own_and_closing_frees_them():
    """Two subscribers with their own filters; each closing lets go of its subscription, and
    stopping the server ends a subscriber's stream: with none left, workers stop sending."""
    with Pool(Toolbox, size=1, start_timeout=30) as pool:
        server = pool.serve("127.0.0.1:0")
        with Client(server.address) as client:
            starts = client.telemetry(allow=["tool.execution.start"])
            stops = client.telemetry(allow=["tool.execution.stop"])

            def both_listening() -> bool:
                pool.execute("measured")
                return pool.execute("listening")

            wait_for(both_listening, timeout=30)
            pool.execute("measured", correlation_id="two-subs")
            assert {e["name"] for e in _until_correlation(starts, "two-subs", 2)} == {"tool.execution.start"}
            assert {e["name"] for e in _until_correlation(stops, "two-subs", 1)} == {"tool.execution.stop"}
            starts.close()
            with pytest.raises(StopIteration):
                next(starts)
            assert pool.execute("listening") is True  # one subscriber is left
            stopping = time.monotonic()
            server.stop(grace=30)  # telemetry streams end at once, not at the grace's end
            assert time.monotonic() - stopping < 10
            remaining = list(stops)  # what was in flight, then the end
            assert all(e["name"] == "tool.execution.stop" for e in remaining)
            with pytest.raises(StopIteration):
                next(stops)
            wait_for(lambda: pool.execute("listening") is False, timeout=30)


def _until_correlation(events, correlation_id: str, count: int) -> list[dict]:
    """The next ``count`` events of a call, skipping those of earlier ones."""
    mine: list[dict] = []
    deadline = time.monotonic() + 30
    while len(mine) < count:
        assert time.monotonic() < deadline
        event = next(events)
        if event["correlation_id"] == correlation_id:
            mine.append(event)
    return mine


def test_stream_telemetry_takes_the_same_token_as_every_rpc():
    with Pool(Toolbox, size=1, start_timeout=30) as pool:
        address = pool.serve("127.0.0.1:0", token="tel-token").address
        with Client(address) as anonymous, anonymous.telemetry() as events:
            with pytest.raises(SnakepitError) as refused:
                next(events)
            assert refused.value.reason == "unauthenticated"
        with Client(address, token="tel-token") as client, client.telemetry(allow=["tool.*"]) as events:
            with _calling(address, "tok", token="tel-token"):
                assert next(events)["correlation_id"] == "tok"


def test_client_telemetry_streams_keep_choices_and_end_with_their_loops(served):
    import asyncio
    import gc

    pool, address = served
    with Client(address) as client:
        with _calling(address, "loops"):
            events = client.telemetry(allow=["tool.*"])
            events.control(deny=["tool.execution.start"])  # allow stays: no snakepit.telemetry.* either
            run, deadline = 0, time.monotonic() + 30
            for event in events:
                assert time.monotonic() < deadline
                run = run + 1 if event["name"] in ("tool.execution.stop", "tool.execution.exception") else 0
                if run == 8:
                    break  # leaving the loop ends the subscription
            with pytest.raises(StopIteration):
                next(events)
            with pytest.raises(SnakepitError):
                events.control(enabled=False)
        wait_for(lambda: pool.execute("listening") is False, timeout=30)

        before = threading.active_count()  # the pool's delivery threads are up by now
        dropped = client.telemetry()  # never closed, never read: collected, it lets go
        wait_for(lambda: pool.execute("listening"), timeout=30)
        del dropped
        gc.collect()
        wait_for(lambda: pool.execute("listening") is False, timeout=30)
        wait_for(lambda: threading.active_count() <= before, timeout=30)  # its sending thread ended

        async def asynchronously() -> None:
            stream = client.atelemetry(allow=["nothing.*"])
            await await_for(lambda: pool.execute("listening"), timeout=30)  # subscribed before any read
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stream.__anext__(), 0.2)  # cancelled while waiting: it ends
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
            await stream.aclose()

        asyncio.run(asynchronously())
        wait_for(lambda: pool.execute("listening") is False, timeout=30)


def test_chunk_metadata_cannot_forge_the_servers_keys(served):
    pool, address = served
    with pool.stream("odd_metadata", correlation_id="odd-local") as local:
        expected = [(value, local.metadata) for value in local]
    with Client(address) as client:
        stream = client.stream("odd_metadata", correlation_id="odd-remote")
        got = [(value, stream.metadata) for value in stream]
    assert got == expected
    assert expected[0] == (1, {"content_type": "text/plain", "snakepit-content-type": "application/x-python-pickle"})
    assert expected[1][0] == b"raw"
    result = stream.result
    assert result is not None and local.result is not None
    assert result.worker_id in {worker["id"] for worker in pool.stats()["worker_info"]}  # not the tool's "not mine"
    assert (result.correlation_id, result.synthetic_final) == ("odd-remote", False)
    assert result.metadata == local.result.metadata == expected[2][1]


def test_a_grpc_deadline_alone_still_gets_the_errors_json(bridge):
    """Snakepit's clients bound calls with a deadline: the pool's timeout fires first, so the
    status carries the error's JSON, not grpc's bare 'Deadline Exceeded'."""
    pb, stub = bridge
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            stub.ExecuteTool(_request(pb, "sleep", seconds=5), timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        kind, _, payload = _translated(info.value.details())
        assert (kind, payload["reason"]) == ("Timeout", "timeout")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ExecuteStreamingTool(_request(pb, "count", n=50, delay=0.2), timeout=1.0))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _translated(info.value.details())[2]["reason"] == "timeout"


def test_stuck_subscribers_cost_the_pool_a_bounded_backlog(stubs, served):
    """Subscribers that never read: each keeps a bounded buffer, the pool's own backlog of
    telemetry is bounded, and the owner's memory stays flat however much the tools send."""
    import psutil

    pool, address = served
    channels = [_channel(address, ("grpc.http2.bdp_probe", 0)) for _ in range(10)]
    controls: queue.SimpleQueue = queue.SimpleQueue()
    calls = [_stub(channel).StreamTelemetry(iter(controls.get, None)) for channel in channels]
    owner = psutil.Process()
    try:
        wait_for(lambda: pool.execute("listening"), timeout=30)
        pool.execute("chatty", {"n": 20_000})  # the buffers fill; what follows is the backlog's
        start = owner.memory_info().rss
        for _ in range(5):
            assert pool.execute("chatty", {"n": 50_000}) == 50_000
        assert pool.execute("add", {"a": 1}) == 2
        grown = owner.memory_info().rss - start
        assert grown < 150 * 2**20, f"the owner grew by {grown / 2**20:.0f} MiB"
    finally:
        for _ in calls:
            controls.put(None)
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()

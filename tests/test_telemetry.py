"""Telemetry from tools and correlation ids, end to end; OpenTelemetry spans (the otel extra)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import Toolbox, wait_for

from snakepit import Pool, SnakepitError


def _telemetry(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] in ("telemetry", "span_start", "span_stop", "span_exception")]


def test_a_tools_telemetry_reaches_on_event_with_worker_tool_and_correlation_id():
    events: list[dict] = []
    with Pool(Toolbox, size=1, on_event=events.append) as pool:
        worker = pool.stats()["worker_info"][0]["id"]
        assert pool.execute("measured", {"rows": 3}, correlation_id="req-7") == 3
        wait_for(lambda: len(_telemetry(events)) == 5)
    got = _telemetry(events)
    assert [(e["event"], e["name"]) for e in got] == [
        ("telemetry", "loaded"),
        ("span_start", "work"),
        ("span_stop", "work"),
        ("span_start", "failing"),
        ("span_exception", "failing"),
    ]
    assert all((e["worker_id"], e["tool"], e["correlation_id"]) == (worker, "measured", "req-7") for e in got)
    assert all(isinstance(e["time"], float) for e in got)
    loaded, start, stop, _, failed = got
    assert (loaded["measurements"], loaded["metadata"]) == ({"rows": 3}, {"source": "test"})
    assert (
        start["metadata"] == {"step": 1}
        and stop["duration_ms"] >= 0
        and stop["measurements"]["duration_ms"] == stop["duration_ms"]
    )
    assert failed["error"] == "ValueError: bad input" and failed["duration_ms"] >= 0


def test_telemetry_is_also_logged_and_values_that_cannot_travel_arrive_as_text(caplog):
    caplog.set_level(logging.INFO, logger="snakepit.telemetry")
    with Pool(Toolbox, size=1) as pool:  # no on_event: the logger listens
        pool.execute("odd_telemetry", correlation_id="c-1")
        record = wait_for(lambda: next((r for r in caplog.records if r.name == "snakepit.telemetry"), None))
    assert record.snakepit_event == "telemetry" and record.snakepit_name == "odd"
    assert record.correlation_id == "c-1" and record.tool == "odd_telemetry"
    assert record.measurements == {"value": "Point(x=1, y=2)", "huge": str(1 << 70), "fine": 1.5}
    assert record.metadata == {"7": "seven"}


def test_nothing_is_sent_when_nobody_listens(caplog):
    caplog.set_level(logging.WARNING, logger="snakepit.telemetry")
    with Pool(Toolbox, size=1) as pool:
        state = pool.execute("state")
        assert pool.execute("measured") == 1
    assert not [r for r in caplog.records if r.name == "snakepit.telemetry"]
    assert state["pid"]  # the worker ran it, with telemetry switched off at boot


def test_subscribers_switch_the_workers_telemetry_on_then_off(caplog):
    """The first subscriber switches tools' telemetry on in running workers and in those started
    later; when the last one leaves, they stop sending (a flag check again)."""
    caplog.set_level(logging.WARNING, logger="snakepit.telemetry")
    with Pool(Toolbox, size=1) as pool:
        assert pool.execute("listening") is False
        events: list[dict] = []
        leave = pool.subscribe(events.append)
        wait_for(lambda: pool.execute("listening"), timeout=30)
        pool.execute("measured", correlation_id="sub-1")
        wait_for(lambda: any(e.get("correlation_id") == "sub-1" for e in _telemetry(events)), timeout=30)
        with pytest.raises(SnakepitError) as info:
            pool.execute("crash")
        assert info.value.reason == "worker_crashed"
        assert pool.execute("listening") is True  # its replacement was told at once
        other = pool.subscribe(lambda event: None)
        leave()
        leave()  # again: nothing
        assert pool.execute("listening") is True  # one subscriber is left
        other()
        wait_for(lambda: pool.execute("listening") is False, timeout=30)


def test_stream_chunks_telemetry_and_the_result_carry_the_correlation_id():
    events: list[dict] = []
    with Pool(Toolbox, size=1, on_event=events.append) as pool:
        result = pool.execute_stream("measured_stream", {"n": 2}, lambda chunk: None)
        assert result.correlation_id and result.correlation_id.count("-") == 1
        wait_for(lambda: len(_telemetry(events)) == 2)
        assert {e["correlation_id"] for e in _telemetry(events)} == {result.correlation_id}
        other = pool.execute_stream("count", {"n": 1}, lambda chunk: None)
        assert other.correlation_id != result.correlation_id  # one per call


def test_errors_and_events_carry_the_calls_correlation_id():
    events: list[dict] = []
    with Pool(Toolbox, size=1, on_event=events.append, cancel_grace=0.3, quarantine_after=None) as pool:
        for tool, args, reason in [
            ("fail", {}, "tool_exception"),
            ("no_such_tool", {}, "tool_not_found"),
            ("add", {"a": "x"}, "invalid_arguments"),
            ("crash", {}, "worker_crashed"),
        ]:
            with pytest.raises(SnakepitError) as caught:
                pool.execute(tool, args, correlation_id=f"id-{tool}")
            assert caught.value.reason == reason
            assert caught.value.details["correlation_id"] == f"id-{tool}"
            wait_for(lambda: pool.stats()["workers"] == 1, timeout=15)
        with pytest.raises(SnakepitError) as caught:
            pool.execute("sleep", {"seconds": 5}, timeout=0.2, correlation_id="slow")
        assert caught.value.details["correlation_id"] == "slow"
        [timeout] = [e for e in events if e["event"] == "timeout"]
        assert timeout["correlation_id"] == "slow"
        with pytest.raises(SnakepitError) as caught:
            list(pool.stream("stream_then_fail", {"n": 1}, correlation_id="streamed"))
        assert caught.value.details["correlation_id"] == "streamed"
        results = list(pool.map("add", [{"a": 1}, {"a": "x"}], return_exceptions=True, correlation_id="mapped"))
        assert results[0] == 2 and results[1].details["correlation_id"] == "mapped"

        async def failing() -> SnakepitError:
            try:
                await pool.aexecute("fail", correlation_id="async")
            except SnakepitError as exc:
                return exc
            raise AssertionError("expected an error")

        assert asyncio.run(failing()).details["correlation_id"] == "async"
        with pytest.raises(SnakepitError) as caught:
            pool.execute("add", {"a": 1}, correlation_id="")
        assert caught.value.reason == "invalid_arguments"


def test_worker_log_records_carry_the_correlation_id(caplog):
    caplog.set_level(logging.INFO, logger="snakepit.worker")
    with Pool(Toolbox, size=1) as pool:
        pool.execute("measured", {"rows": 2}, correlation_id="logged")
        record = wait_for(lambda: next((r for r in caplog.records if "measured 2 rows" in r.getMessage()), None))
    assert record.correlation_id == "logged" and record.worker_logger == "tool"


def test_the_grpc_facade_takes_the_correlation_id_from_request_metadata():
    pytest.importorskip("grpc")
    from snakepit.grpc import Client

    events: list[dict] = []
    with Pool(Toolbox, size=1, on_event=events.append) as pool:
        server = pool.serve("127.0.0.1:0")
        with Client(server.address) as client:
            with pytest.raises(SnakepitError) as caught:
                client.execute("fail", correlation_id="from-grpc")
            assert caught.value.details["correlation_id"] == "from-grpc"
            assert client.execute("measured", correlation_id="remote") == 1
            idempotent = {spec.name: spec.idempotent for spec in client.tools()}
            assert idempotent["crash_first"] is True and idempotent["add"] is False  # ToolSpec metadata
        wait_for(lambda: any(e.get("correlation_id") == "remote" for e in _telemetry(events)))


OTEL = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from snakepit import Pool

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if __name__ == "__main__":
        with Pool("otel_tools:Traced", size=1) as pool:
            inner = pool.execute("traced", correlation_id="otel-1")
        spans = [
            {{"name": s.name, "id": s.context.span_id, "trace": s.context.trace_id,
              "parent": s.parent.span_id if s.parent else None, "attributes": dict(s.attributes)}}
            for s in exporter.get_finished_spans()
        ]
        print(json.dumps({{"inner": inner, "spans": spans}}))
    """
)


def test_opentelemetry_spans_per_call_with_the_tools_spans_as_children(tmp_path):
    pytest.importorskip("opentelemetry.sdk")
    import json

    script = tmp_path / "owner.py"
    script.write_text(OTEL.format(tests=os.path.dirname(__file__)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=os.path.dirname(__file__)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    spans = {span["name"]: span for span in run["spans"]}
    call = spans["snakepit.call traced"]
    assert call["attributes"]["snakepit.correlation_id"] == "otel-1" and call["attributes"]["snakepit.worker_id"] == 1
    assert spans["snakepit.queue"]["parent"] == call["id"] and spans["snakepit.run"]["parent"] == call["id"]
    assert len({span["trace"] for span in run["spans"]}) == 1
    inner = run["inner"]  # the span the tool opened, exported in the worker
    assert (inner["trace"], inner["parent"]) == (call["trace"], call["id"])

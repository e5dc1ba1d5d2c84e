"""One contract, two backends: what a caller sees is the same whether workers are local
processes or Ray actors -- calls, streams, cancellation, errors, sessions and the three affinity
modes, map, asyncio, a worker that dies mid-stream.

The differences the Ray guide's backend table lists are encoded here, and nothing more:
* a crashed process worker's error names its exit (``exit_code``/``signal``), an actor's the
  error Ray reported (``error``);
* chunks a process worker yielded before dying are all delivered (its spill queue); an actor's
  are delivered as far as Ray had streamed them;
* a tool blocked in a C call (``time.sleep``) is interrupted at once in a process worker; an
  actor's is stopped by killing the actor after ``cancel_grace`` (it is replaced).
* ``snakepit.shared`` allocates in shared memory in a process worker, and makes a plain array in
  an actor (Ray's object store carries large values).

Ray runs as one local instance for this module (``num_cpus=2``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from helpers import FailingInit, Toolbox, await_for, wait_for

from snakepit import HALT, Encoded, Pool, SnakepitError

BACKENDS = ["process", "ray"]


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray for this module, shut down at its end: its background threads open and
    close descriptors, which other modules' leak checks must not see."""
    ray = pytest.importorskip("ray", reason="the ray extra runs the Ray half of the contract")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test instance
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(params=BACKENDS)
def backend(request) -> dict:
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
        return {"backend": "ray", "actor_options": {"num_cpus": 0.25}}
    return {"backend": "process"}


@pytest.fixture
def pool(backend):
    with Pool(Toolbox, size=2, start_timeout=60, cancel_grace=1.0, **backend) as pool:
        yield pool


def test_calls_results_and_errors(pool):
    assert pool.execute("add", {"a": 2, "b": 40}) == 42
    assert pool.execute("pair", {"p": (1, 2)}) == (1.0, 2.0)  # values travel exactly
    with pytest.raises(SnakepitError) as info:
        pool.execute("fail", {"message": "nope"})
    assert (info.value.category, info.value.reason) == ("python_error", "tool_exception")
    assert "nope" in info.value.message and "in fail" in (info.value.traceback or "")  # the worker-side traceback
    with pytest.raises(SnakepitError) as info:
        pool.execute("missing")
    assert info.value.reason == "tool_not_found"
    assert pool.stats()["size"] == 2 and all(w["pid"] for w in pool.stats()["worker_info"])


def test_streams_in_order_with_halt_final_and_failure(pool):
    assert [c["number"] for c in pool.stream("count", {"n": 50})] == list(range(50))
    stream = pool.stream("with_final", {"n": 2})
    assert list(stream)[-1] == {"done": True} and stream.result.metadata == {"total": 2}
    seen = []
    result = pool.execute_stream("count", {"n": 1000}, lambda c: HALT if len(seen) == 3 else seen.append(c))
    assert result.halted and len(seen) == 3
    got = []
    with pytest.raises(SnakepitError) as info:
        for item in pool.stream("stream_then_fail", {"n": 3}):
            got.append(item)
    assert got == [0, 1, 2] and info.value.reason == "tool_exception"


def test_values_come_encoded_by_request(pool):
    """The process backend's workers encode them, the Ray backend's owner does: the same bytes."""
    json, raw, pickled = "application/json", "application/octet-stream", "application/x-python-pickle"
    assert pool.execute("add", {"a": 1, "b": 2}, encode="json") == Encoded(b"3", json)
    chunks = list(pool.stream("stream_values", {"values": [1, b"r", (2,), "s" * 300_000]}, encode="pickle"))
    assert chunks[:2] == [Encoded(b"1", json), Encoded(b"r", raw)] and chunks[2].content_type == pickled
    assert chunks[3] == Encoded(b'"' + b"s" * 300_000 + b'"', json)
    got = []
    with pytest.raises(SnakepitError) as info:
        for chunk in pool.stream("stream_values", {"values": [1, 2j, 3]}, encode="json"):
            got.append(chunk)
    assert got == [Encoded(b"1", json)] and info.value.reason == "serialization_error"


def test_values_msgpack_refuses_travel_pickled_from_both_kinds_of_worker(pool):
    """A str with a lone surrogate, an int beyond 64 bits: msgpack refuses them, so the worker
    pickles them, whether it is a process or an actor (which sent them to Ray's thread to be
    encoded there, and died of it)."""
    odd = ["lone \udc80", 2**70, {"k": "\udcff"}]
    assert list(pool.stream("stream_values", {"values": odd})) == odd
    assert pool.execute("echo", {"value": odd}) == odd
    assert pool.execute("add", {"a": 1, "b": 2}) == 3  # the same worker, alive


def test_batched_streams_pack_the_chunks_at_hand(pool):
    """Process workers build the arrays, the Ray backend's owner packs what arrived: the same
    chunks, in order, as arrays of at most ``batch``; a chunk with metadata in one of its own."""
    import json

    n = 3_000
    with pool.stream("count", {"n": n}, encode="json", batch=100) as stream:
        values = list(stream)
    arrays = [json.loads(value.data) for value in values]
    assert [chunk["number"] for array in arrays for chunk in array] == list(range(n))
    assert max(map(len, arrays)) <= 100 and {value.content_type for value in values} == {"application/json"}
    assert stream.result is not None and stream.result.chunks == len(values)  # the values it delivered
    taken: list[Encoded] = []

    def take(value: Encoded) -> object:
        taken.append(value)
        return HALT if len(taken) == 3 else None

    halted = pool.execute_stream("count", {"n": n}, take, encode="json", batch=100)
    assert halted.halted and halted.chunks == 3
    with pool.stream("with_final", {"n": 2}, encode="pickle", batch=10) as stream:
        seen = [(json.loads(value.data), stream.metadata) for value in stream]
    assert seen == [([{"i": 0}], {"seq": 0}), ([{"i": 1}], {"seq": 1}), ([{"done": True}], {"total": 2})]


def test_a_batched_stream_ends_at_a_chunk_json_cannot_carry_after_every_chunk_before_it(pool):
    """Arrived together or not, the chunks before the one that cannot be encoded are delivered
    (the Ray backend's owner packed them with it, and lost them), then its error."""
    import json

    values: list[object] = [*range(200), 2j, 3]
    got = []
    with pytest.raises(SnakepitError) as info:
        for value in pool.stream("stream_values", {"values": values}, encode="json", batch=1000):
            got.append(value)
    assert info.value.reason == "serialization_error"
    assert [chunk for value in got for chunk in json.loads(value.data)] == list(range(200))
    assert pool.execute("add", {"a": 1}) == 2


def test_leaving_a_stream_early_closes_the_generator_in_the_worker(pool):
    with pool.session("s", affinity="strict_queue") as session:
        for index, _ in enumerate(session.stream("guarded", {"delay": 0.001})):
            if index == 5:
                break
        wait_for(lambda: session.execute("state")["closed_streams"] == 1, timeout=30)


def test_sessions_and_the_three_affinity_modes(pool):
    strict = pool.session("pinned", affinity="strict_queue")
    worker = strict.execute("state")["pid"]
    assert all(strict.execute("state")["pid"] == worker for _ in range(5))
    busy = threading.Thread(target=lambda: strict.execute("sleep", {"seconds": 1.0}))
    busy.start()
    wait_for(lambda: pool.stats()["busy"] >= 1)
    with pytest.raises(SnakepitError) as info:
        pool.execute("state", session_id="pinned", affinity="strict_fail_fast")
    assert info.value.reason == "worker_busy"
    assert strict.execute("state")["pid"] == worker  # strict_queue waited for it
    busy.join(30)
    hinted = pool.execute("state", session_id="pinned", affinity="hint")
    assert hinted["pid"] == worker


def test_map_keeps_order_and_reports_failures_in_place(pool):
    assert list(pool.map("add", [{"a": i} for i in range(200)])) == [i + 1 for i in range(200)]
    results = list(pool.map("first", [{"items": [1]}, {"items": []}, {"items": [3]}], return_exceptions=True))
    assert results[0] == 1 and isinstance(results[1], SnakepitError) and results[2] == 3


def test_asyncio_calls_streams_and_cancellation(pool):
    async def scenario():
        assert await pool.aexecute("add", {"a": 1}) == 2
        assert [c["number"] async for c in pool.astream("count", {"n": 5})] == list(range(5))
        task = asyncio.ensure_future(pool.aexecute("sleep", {"seconds": 30}))
        await await_for(lambda: pool.stats()["busy"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.gather(*(pool.aexecute("add", {"a": i}) for i in range(10)))

    assert asyncio.run(scenario()) == [i + 1 for i in range(10)]


def test_a_worker_dying_mid_stream_is_worker_crashed_and_replaced(pool, backend):
    got = []
    with pytest.raises(SnakepitError) as info:
        for item in pool.stream("stream_then_crash", {"n": 3}):
            got.append(item)
    assert (info.value.category, info.value.reason) == ("worker", "worker_crashed")
    if backend["backend"] == "process":
        assert got == [0, 1, 2] and info.value.details["exit_code"] == 9
    else:
        assert got == [0, 1, 2][: len(got)] and info.value.details["error"]
    wait_for(lambda: pool.stats()["available"] == 2, timeout=60)
    assert pool.execute("add", {"a": 1}) == 2


def test_a_timed_out_call_frees_its_worker(pool, backend):
    started = time.monotonic()
    with pytest.raises(SnakepitError) as info:
        pool.execute("sleep", {"seconds": 30}, timeout=0.5)
    assert info.value.category == "timeout" and time.monotonic() - started < 10
    # process: interrupted at once; ray: the actor is killed after cancel_grace and replaced
    wait_for(lambda: pool.stats()["available"] == 2, timeout=60)
    assert pool.execute("add", {"a": 1}) == 2


def test_a_worker_that_cannot_start_fails_start(backend):
    with pytest.raises(SnakepitError) as info:
        Pool(FailingInit, size=1, start_timeout=60, **backend).start()
    assert info.value.reason == "worker_start_failed" and "cannot load the model" in info.value.message


def test_cleanup_runs_once_per_worker_at_close(backend, tmp_path):
    marker = tmp_path / "cleaned"
    with Pool(Toolbox, size=2, start_timeout=60, worker_env={"SNAKEPIT_TEST_CLEANUP_FILE": str(marker)}, **backend) as pool:
        pids = {info["pid"] for info in pool.stats()["worker_info"]}
        assert pool.execute("state")["initialized"] == 1  # initialize() once per worker
    assert sorted(int(line) for line in marker.read_text().split()) == sorted(pids)


def test_workers_work_in_the_owners_directory(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # after Ray started elsewhere: the pool's own start counts
    with Pool(Toolbox, size=1, start_timeout=60, **backend) as pool:
        assert pool.execute("state")["cwd"] == str(tmp_path)


def test_a_served_pool_works_the_same_over_grpc(pool):
    pytest.importorskip("grpc", reason="the grpc extra")
    from snakepit.grpc import Client

    with Client(pool.serve("127.0.0.1:0").address) as client:
        assert client.execute("add", {"a": 2, "b": 3}) == 5
        assert [c["number"] for c in client.stream("count", {"n": 3})] == [0, 1, 2]


def test_tools_telemetry_reaches_on_event_and_subscribers(backend):
    """Both backends: with on_event, workers send tools' telemetry from the start; without,
    the first subscriber switches it on in the running workers and the last one off."""
    events: list[dict] = []
    with Pool(Toolbox, size=1, start_timeout=60, on_event=events.append, **backend) as pool:
        assert pool.execute("listening") is True
        pool.execute("measured", correlation_id="on-event")
        wait_for(lambda: any(e.get("correlation_id") == "on-event" and e["event"] == "span_stop" for e in events), timeout=30)
    with Pool(Toolbox, size=1, start_timeout=60, **backend) as pool:
        assert pool.execute("listening") is False
        got: list[dict] = []
        leave = pool.subscribe(got.append)
        wait_for(lambda: pool.execute("listening"), timeout=30)
        pool.execute("measured", correlation_id="subscribed")
        wait_for(lambda: any(e.get("correlation_id") == "subscribed" for e in got), timeout=30)
        leave()
        wait_for(lambda: pool.execute("listening") is False, timeout=30)


def test_ray_actors_show_their_node_and_an_unplaceable_one_fails_start(ray_instance):
    with Pool(Toolbox, size=1, backend="ray", actor_options={"num_cpus": 0.25}, start_timeout=60) as pool:
        [info] = pool.stats()["worker_info"]
        assert info["pid"] > 0 and info["node"]  # the node's address
        assert info["node_id"] == ray_instance.get_runtime_context().get_node_id()  # this one-node Ray's
    with Pool(Toolbox, size=1) as pool:
        assert pool.stats()["worker_info"][0]["node_id"] is None
    started = time.monotonic()
    with pytest.raises(SnakepitError) as info:
        Pool(Toolbox, size=1, backend="ray", actor_options={"num_gpus": 1}, start_timeout=3).start()  # no GPU here
    assert info.value.reason == "worker_start_failed" and time.monotonic() - started < 30


def test_ray_options_that_do_not_apply_are_refused():
    with pytest.raises(SnakepitError) as info:
        Pool(Toolbox, size=1, backend="ray", memory_limit_mb=100)
    assert info.value.reason == "invalid_config" and "actor_options" in info.value.message
    with pytest.raises(SnakepitError) as info:
        Pool(Toolbox, size=1, actor_options={"num_cpus": 1})
    assert info.value.reason == "invalid_config"


_RAY_OWNERSHIP = """
import sys
sys.path.insert(0, sys.argv[1])
import ray
from helpers import Toolbox
from snakepit import Pool

with Pool(Toolbox, size=1, backend="ray", actor_options={"num_cpus": 0.25}, start_timeout=120) as pool:
    assert pool.execute("add", {"a": 1}) == 2
    assert ray.is_initialized()
print("pool-started ray shut down:", not ray.is_initialized())
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
with Pool(Toolbox, size=1, backend="ray", actor_options={"num_cpus": 0.25}, start_timeout=120) as pool:
    assert pool.execute("add", {"a": 1}) == 2
print("user-started ray left running:", ray.is_initialized())
ray.shutdown()
"""


@pytest.mark.timeout(180)
def test_a_pool_shuts_down_the_ray_it_started_and_never_the_users():
    pytest.importorskip("ray", reason="the ray extra")
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", _RAY_OWNERSHIP, str(Path(__file__).parent)], capture_output=True, text=True, timeout=170, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pool-started ray shut down: True" in done.stdout and "user-started ray left running: True" in done.stdout


def test_a_worker_is_recycled_after_max_requests(backend):
    with Pool(Toolbox, size=1, max_requests=2, start_timeout=60, **backend) as pool:
        first = [pool.execute("state")["pid"] for _ in range(2)]
        assert first[0] == first[1]
        wait_for(lambda: pool.stats()["recycled"] == 1 and pool.stats()["available"] == 1, timeout=60)
        assert pool.execute("state")["pid"] != first[0]  # a fresh worker


def test_import_snakepit_and_a_process_pool_never_import_ray():
    import subprocess
    import sys

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import snakepit; from helpers import Toolbox\n"
        "with snakepit.Pool(Toolbox, size=1) as pool: pool.execute('add', {'a': 1})\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-c", probe, str(Path(__file__).parent)], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("death", ["crash", "kill_self"])  # os._exit, SIGKILL
def test_a_strict_session_whose_worker_died_is_told_once_then_starts_afresh(pool, death):
    session = pool.session("strict", affinity="strict_queue")
    session.execute("add", {"a": 1})
    with pytest.raises(SnakepitError) as info:
        session.execute(death)
    assert info.value.reason == "worker_crashed"
    with pytest.raises(SnakepitError) as info:
        session.execute("add", {"a": 1})
    assert info.value.reason == "session_worker_unavailable"
    assert session.execute("add", {"a": 1}) == 2  # pinned afresh to a live worker


def test_a_slow_reader_of_big_chunks_holds_the_tool_back(backend):
    """Backpressure on both backends: 1 MiB chunks, endless; the consumer reads a few slowly.
    The tool runs only a bounded number of chunks ahead (the buffers on the way), far from the
    hundreds of megabytes an unbounded stream would make."""
    from helpers import Faulty

    with Pool(Faulty, size=1, start_timeout=60, **backend) as pool:
        with pool.session("s", affinity="strict_queue") as session:
            stream = session.stream("flood", {"size": 1 << 20})
            for index, chunk in enumerate(stream):
                assert len(chunk) == 1 << 20
                time.sleep(0.2)
                if index == 5:
                    break
            stream.close()
            counters = wait_for(lambda: (c := session.execute("flooded", timeout=30))["closed_streams"] == 1 and c, timeout=60)
    assert counters["produced"] < 6 + 200, counters


def test_close_gives_a_running_call_pool_closed_at_once(backend, tmp_path):
    """On Ray a tool in time.sleep cannot be interrupted (an asynchronous exception waits for
    the next bytecode): its actor is killed at shutdown_timeout. The caller does not wait for it."""
    marker = str(tmp_path / "sleeping")
    pool = Pool(Toolbox, size=1, start_timeout=60, shutdown_timeout=12.0, kill_grace=0.5, cancel_grace=60, **backend).start()
    outcome: list[tuple[BaseException, float]] = []

    def call() -> None:
        try:
            pool.execute("sleep", {"seconds": 60, "marker": marker})
        except BaseException as exc:
            outcome.append((exc, time.monotonic()))

    caller = threading.Thread(target=call)
    caller.start()
    try:
        wait_for(lambda: os.path.exists(marker), timeout=30)
    finally:
        began = time.monotonic()
        pool.close()
        caller.join(30)
    [(error, when)] = outcome
    assert isinstance(error, SnakepitError) and error.reason == "pool_closed", error
    assert when - began < 2.5  # not after shutdown_timeout (12 s), when the actor is killed


def test_a_draining_close_lets_running_and_queued_calls_finish(backend, tmp_path):
    """close(wait=True): new calls are refused at once, the call running and the one queued
    finish, then the pool closes. Nothing backend-specific: the drain is the pool's."""
    gate, marker = str(tmp_path / "gate"), str(tmp_path / "running")
    pool = Pool(Toolbox, size=1, start_timeout=60, **backend).start()
    outcomes: dict[str, object] = {}

    def call(name: str, tool: str, args: dict) -> None:
        try:
            outcomes[name] = pool.execute(tool, args)
        except BaseException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=call, args=("running", "gate", {"path": gate, "marker": marker, "value": 7}))]
    threads[0].start()
    wait_for(lambda: os.path.exists(marker), timeout=30)
    threads.append(threading.Thread(target=call, args=("queued", "add", {"a": 1})))
    threads[1].start()
    wait_for(lambda: pool.stats()["waiting"] == 1)
    closer = threading.Thread(target=pool.close, kwargs={"wait": True})
    closer.start()
    try:
        wait_for(lambda: "draining" in repr(pool))
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1})
        assert info.value.reason == "pool_closed"
    finally:
        open(gate, "w").close()
        for thread in [*threads, closer]:
            thread.join(60)
    assert not closer.is_alive() and outcomes == {"running": 7, "queued": 2}
    assert "closed" in repr(pool)


def test_plain_functions_futures_and_typed_errors(backend):
    """Functions as tools (with setup's state), keyword calls, futures, and a tool's exception
    of its own type: written once above the backends, the same on both."""
    from function_tools import add, countdown, divide, load_model, predict

    with Pool([add, countdown, predict, divide], size=1, setup=load_model, start_timeout=60, **backend) as pool:
        assert pool.execute("add", a=1, b=2) == 3
        assert list(pool.stream("countdown", n=2)) == [2, 1]
        assert pool.execute("predict", row=[1.0, 2.0]) == "tiny:3.0"
        assert pool.submit("add", a=5).result(timeout=60) == 6
        assert list(pool.starmap("add", [(1, 1), (2, 2)])) == [2, 4]
        with pytest.raises(ZeroDivisionError) as info:
            pool.execute("divide", a=1, b=0)
        assert isinstance(info.value, SnakepitError) and info.value.reason == "tool_exception"


def test_shared_arrays_are_shared_in_process_workers_and_plain_in_actors(pool, backend):
    shared, array = pool.execute("shared_array", {"size": 4 << 20})
    assert shared is (backend["backend"] == "process")
    assert array.nbytes == 4 << 20 and not array.any()

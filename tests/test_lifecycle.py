"""Pool life cycle against real processes: start, close, crashes, replacement, adapters' travel."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import threading
import time

import psutil
import pytest
from helpers import FailingInit, Toolbox, wait_for

from snakepit import HALT, BaseAdapter, Pool, SnakepitError, tool


def test_calls_before_start_and_after_close_are_pool_closed():
    pool = Pool(Toolbox, size=1)
    with pytest.raises(SnakepitError) as info:
        pool.execute("add", {"a": 1})
    assert (info.value.category, info.value.reason) == ("pool", "pool_closed")
    pool.start()
    assert pool.execute("add", {"a": 1}) == 2
    pool.close()
    pool.close()  # idempotent
    for call in (lambda: pool.execute("add", {"a": 1}), lambda: pool.stream("count", {"n": 1})):
        with pytest.raises(SnakepitError) as info:
            call()
        assert info.value.reason == "pool_closed"


def test_start_runs_workers_in_parallel_and_initialize_once(tmp_path):
    started = time.monotonic()
    with Pool(Toolbox, size=3) as pool:
        elapsed = time.monotonic() - started
        assert pool.stats()["workers"] == 3
        # Three calls held at once take the three workers; their sessions stay pinned to them.
        gate = tmp_path / "gate"
        held = [pool.submit("gate", path=str(gate), marker=str(tmp_path / f"m{i}"), session_id=f"s{i}") for i in range(3)]
        wait_for(lambda: all((tmp_path / f"m{i}").exists() for i in range(3)), timeout=30)
        gate.touch()
        for future in held:
            future.result(timeout=30)
        states = [pool.execute("state", session_id=f"s{i % 3}") for i in range(9)]
    assert {s["initialized"] for s in states} == {1}
    assert len({s["pid"] for s in states}) == 3
    assert elapsed < 10


def test_close_runs_cleanup_in_every_worker_and_reaps_them(tmp_path, monkeypatch):
    marker = tmp_path / "cleanup.txt"
    monkeypatch.setenv("SNAKEPIT_TEST_CLEANUP_FILE", str(marker))
    pool = Pool(Toolbox, size=2).start()
    pids = {w["pid"] for w in pool.stats()["worker_info"]}
    pool.close()
    assert {int(line) for line in marker.read_text().split()} == pids
    for pid in pids:
        assert not psutil.pid_exists(pid)  # exited and reaped: no zombie


def test_failing_initialize_fails_start_with_the_worker_traceback():
    pool = Pool(FailingInit, size=2)
    started = time.monotonic()
    with pytest.raises(SnakepitError) as info:
        pool.start()
    assert time.monotonic() - started < 10
    err = info.value
    assert (err.category, err.reason) == ("worker", "worker_start_failed")
    assert "cannot load the model" in err.message
    assert "RuntimeError" in err.traceback and "initialize" in err.traceback
    with pytest.raises(SnakepitError) as info:
        pool.execute("noop")
    assert info.value.reason == "pool_closed"


def test_unimportable_adapter_string_fails_start():
    with pytest.raises(SnakepitError) as info:
        Pool("no_such_module_xyz:Adapter", size=1).start()
    assert info.value.reason == "worker_start_failed" and "no_such_module_xyz" in info.value.message


def test_bad_configuration_is_a_validation_error():
    for kwargs in (
        {"size": 0},
        {"size": "2"},
        {"max_queue": -1},
        {"backend": "thread"},
        {"cancel_grace": math.nan},
        {"kill_grace": math.inf},
        {"heartbeat_interval": None},
    ):
        with pytest.raises(SnakepitError) as info:
            Pool(Toolbox, **kwargs)
        assert (info.value.category, info.value.reason) == ("validation", "invalid_config")
    for kwargs in ({"timeout": -1}, {"timeout": 0}, {"timeout": math.nan}, {"queue_timeout": 0}, {"queue_timeout": "1"}):
        with pytest.raises(SnakepitError) as info:
            Pool(Toolbox, **kwargs)
        assert (info.value.category, info.value.reason) == ("validation", "invalid_config")  # the pool's, as every option
    with pytest.raises(SnakepitError):
        Pool("not a path", size=1)
    with pytest.raises(SnakepitError):
        Pool(42, size=1)


def test_adapter_defined_locally_travels_by_value():
    class Local(BaseAdapter):
        def __init__(self, factor: int = 1):
            self.factor = factor

        @tool
        def scale(self, x: int) -> int:
            return x * self.factor

    with Pool(Local, size=1, adapter_args={"factor": 3}) as pool:
        assert pool.execute("scale", {"x": 5}) == 15


def test_adapter_by_import_string_and_constructor_args():
    with Pool("helpers:Toolbox", size=1, adapter_args={"greeting": "hi"}) as pool:
        assert pool.execute("state")["greeting"] == "hi"


@pytest.mark.parametrize("greeting", ["\ud800", 2**70, (1, 2)], ids=["lone-surrogate", "big-int", "tuple"])
def test_constructor_args_msgpack_refuses_or_changes_travel_pickled(greeting):
    """Regression: a lone surrogate made the boot frame fail on the supervisor thread and
    start() waited forever."""
    with Pool(Toolbox, size=1, adapter_args={"greeting": greeting}) as pool:
        assert pool.execute("state")["greeting"] == greeting


def test_workers_see_owner_path_cwd_and_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Pool(Toolbox, size=1, worker_env={"SNAKEPIT_TEST_VAR": "yes", "MKL_NUM_THREADS": "4"}) as pool:
        state = pool.execute("state")
    import sys

    assert os.path.realpath(state["cwd"]) == os.path.realpath(str(tmp_path))
    assert state["sys_path"] == list(sys.path)
    assert state["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "4", "SNAKEPIT_TEST_VAR": "yes"}


def test_tools_lists_specs_from_introspection(pool):
    specs = {t.name: t for t in pool.tools()}
    add = specs["add"]
    assert add.description == "Add two integers."
    assert not add.supports_streaming
    assert [(p.name, p.type, p.required, p.default) for p in add.parameters] == [
        ("a", "int", True, None),
        ("b", "int", False, 1),
    ]
    assert specs["echo"].description == "echo the value back"
    assert specs["count"].supports_streaming and specs["iterable"].supports_streaming
    assert not specs["not_a_stream"].supports_streaming


# -- crashes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool, args, expected",
    [
        ("crash", {"code": 7}, {"exit_code": 7}),
        ("segfault", {}, {"signal": "SIGSEGV"}),
        ("kill_self", {}, {"signal": "SIGKILL"}),
    ],
)
def test_worker_death_during_a_call(tool, args, expected):
    with Pool(Toolbox, size=1) as pool:
        old_pid = pool.execute("state")["pid"]
        with pytest.raises(SnakepitError) as info:
            pool.execute(tool, args)
        err = info.value
        assert (err.category, err.reason) == ("worker", "worker_crashed")
        for key, value in expected.items():
            assert err.details[key] == value
        # A replacement serves the next call.
        assert pool.execute("state")["pid"] != old_pid
        assert pool.stats()["restarts"] == 1


def test_worker_death_mid_stream_delivers_earlier_chunks_first():
    with Pool(Toolbox, size=1) as pool:
        seen = []
        with pytest.raises(SnakepitError) as info:
            pool.execute_stream("stream_then_crash", {"n": 3}, seen.append)
        assert seen == [0, 1, 2]
        assert info.value.reason == "worker_crashed" and info.value.details["exit_code"] == 9
        assert list(pool.stream("count", {"n": 2})) == [
            {"number": 0, "is_last": False},
            {"number": 1, "is_last": True},
        ]


def test_worker_killed_from_outside_while_idle_is_replaced():
    with Pool(Toolbox, size=2) as pool:
        victim = pool.stats()["worker_info"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pool.stats()["restarts"] == 1 and pool.stats()["workers"] == 2)
        pids = {pool.execute("state")["pid"] for _ in range(6)}
        assert victim not in pids


def test_worker_killed_from_outside_mid_stream():
    with Pool(Toolbox, size=1) as pool:
        stream = pool.stream("guarded", {"delay": 0.01})
        assert next(stream) == 0
        os.kill(stream.worker_id and pool.stats()["worker_info"][0]["pid"], signal.SIGKILL)
        with pytest.raises(SnakepitError) as info:
            for _ in stream:
                pass
        assert info.value.reason == "worker_crashed" and info.value.details["signal"] == "SIGKILL"


def test_close_while_a_stream_runs_ends_it_with_pool_closed():
    pool = Pool(Toolbox, size=1).start()
    outcome: list[BaseException] = []
    got_first = threading.Event()

    def consume():
        try:
            for _ in pool.stream("guarded", {"delay": 0.01}):
                got_first.set()
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    assert got_first.wait(10)
    pool.close()
    t.join(10)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], SnakepitError)
    assert outcome[0].reason == "pool_closed"


def test_queued_callers_are_served_fifo():
    with Pool(Toolbox, size=1) as pool:
        order: list[int] = []
        lock = threading.Lock()
        blocker = threading.Thread(target=pool.execute, args=("sleep", {"seconds": 0.3}))
        blocker.start()
        wait_for(lambda: pool.stats()["busy"] == 1)

        def caller(i):
            pool.execute("add", {"a": i})
            with lock:
                order.append(i)

        threads = []
        for i in range(5):
            t = threading.Thread(target=caller, args=(i,))
            t.start()
            threads.append(t)
            wait_for(lambda i=i: pool.stats()["waiting"] == i + 1)
        blocker.join()
        for t in threads:
            t.join(10)
        assert order == [0, 1, 2, 3, 4]


def test_stats_count_requests_and_errors():
    with Pool(Toolbox, size=1) as pool:
        pool.execute("add", {"a": 1})
        list(pool.stream("count", {"n": 2}))
        with pytest.raises(SnakepitError):
            pool.execute("fail")
        with pytest.raises(SnakepitError):
            pool.execute("missing_tool")
        stats = pool.stats()
        assert stats["requests"] == 4 and stats["errors"] == 2
        assert stats["workers"] == 1 and stats["available"] == 1 and stats["busy"] == 0
        (info,) = stats["worker_info"]
        assert info["state"] == "idle" and info["requests"] >= 2 and psutil.pid_exists(info["pid"])


@pytest.mark.parametrize(
    "kind, threads, tool",
    [
        ("execute", 1, "c_sleep"),
        ("stream", 1, "stubborn"),
        ("aexecute", 1, "c_sleep"),
        ("map", 1, "c_sleep"),
        ("execute", 3, "c_sleep"),
    ],
)
def test_close_gives_running_calls_pool_closed_at_once_while_the_workers_stop(kind, threads, tool, tmp_path):
    """Even a call stuck in C, which only a kill at shutdown_timeout ends: its caller does not
    wait for that."""
    from helpers import Faulty
    from threaded_tools import Threaded

    adapter = Threaded if threads > 1 else Faulty
    pool = Pool(adapter, size=1, threads_per_worker=threads, shutdown_timeout=10.0, kill_grace=0.3, cancel_grace=60).start()
    outcome: list[tuple[BaseException, float]] = []

    marker = str(tmp_path / "stuck")

    def call() -> None:
        try:
            if kind == "execute":
                pool.execute(tool, {"seconds": 60, "marker": marker})
            elif kind == "stream":
                for _ in pool.stream(tool, {"block": 60, "marker": marker}):
                    pass
            elif kind == "aexecute":
                asyncio.run(pool.aexecute(tool, {"seconds": 60, "marker": marker}))
            else:
                list(pool.map(tool, [{"seconds": 60, "marker": marker}] * 3))
        except BaseException as exc:
            outcome.append((exc, time.monotonic()))

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: os.path.exists(marker))  # stuck in C: only a kill ends it
    began = time.monotonic()
    closer = threading.Thread(target=pool.close)
    closer.start()
    caller.join(30)
    closer.join(30)
    assert not caller.is_alive() and not closer.is_alive()
    [(error, when)] = outcome
    assert isinstance(error, SnakepitError) and error.reason == "pool_closed", error
    assert when - began < 2.0  # not after shutdown_timeout (10 s), when the stuck worker is killed


@pytest.mark.parametrize("how", ["read", "unread", "astream"])
def test_a_stream_still_held_when_its_pool_closes_gives_back_its_workers_descriptors(how):
    """close() releases the worker of a stream the caller keeps (a generator in some object):
    its descriptors are closed when close() returns, and using the stream then finds the pool
    closed -- never the closed descriptors, whose numbers may name other files by then."""
    import gc

    def fds() -> list[str]:
        names = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own descriptor
                pass
        return sorted(names)

    with Pool(Toolbox, size=1):  # one-time state (the template's imports), out of the count
        pass
    gc.disable()
    try:
        before = fds()
        pool = Pool(Toolbox, size=1).start()
        loop = asyncio.new_event_loop()
        if how == "astream":
            stream = pool.astream("count", {"n": 100_000, "delay": 0.01})
            loop.run_until_complete(stream.__anext__())
        else:
            stream = pool.stream("count", {"n": 100_000, "delay": 0.01})
            if how == "read":
                next(stream)
        pool.close()
        loop.close()
        assert fds() == before
        with pytest.raises(SnakepitError) as info:
            if how == "astream":
                asyncio.run(_drain(stream))
            else:
                list(stream)
        assert info.value.reason == "pool_closed"
        assert fds() == before
    finally:
        gc.enable()


async def _drain(stream) -> None:
    async for _ in stream:
        pass


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_close_while_another_thread_starts_the_pool_ends_the_start_with_pool_closed(start_method):
    """close() may come at any moment of a start() on another thread: the start ends with
    pool_closed (or, if it finished first, the pool simply closes), close() returns once every
    process is gone, and nothing runs the shutdown beside the start's own steps."""
    for moment in range(4):
        pool = Pool(Toolbox, size=2, start_method=start_method, start_timeout=60)
        outcome: list[object] = []

        def start(pool: Pool = pool, outcome: list[object] = outcome) -> None:
            try:
                outcome.append(pool.start())
            except BaseException as exc:  # anything but pool_closed fails the test below
                outcome.append(exc)

        starter = threading.Thread(target=start)
        starter.start()
        if moment:  # at once, then later and later into the start (which takes ~0.1-1 s)
            wait_for(lambda pool=pool: pool._state == "starting")
            time.sleep(0.05 * moment)  # not a synchronisation: a different moment each round
        began = time.monotonic()
        pool.close()
        closed_after = time.monotonic() - began
        starter.join(30)
        assert not starter.is_alive()
        [result] = outcome
        assert result is pool or (isinstance(result, SnakepitError) and result.reason == "pool_closed"), result
        assert closed_after < 20  # not start_timeout (60 s): the start ends as the pool closes
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1})
        assert info.value.reason == "pool_closed"


# -- a draining close: close(wait=True, drain_timeout=None) ---------------------------------------


def _in_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on a thread of its own: the thread, and a list that will hold its
    outcome, ``("ok", value)`` or ``("error", exception)``."""
    outcome: list[tuple[str, object]] = []

    def run() -> None:
        try:
            outcome.append(("ok", fn(*args, **kwargs)))
        except BaseException as exc:
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _ended(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def _refused(call) -> SnakepitError:
    with pytest.raises(SnakepitError) as info:
        call()
    return info.value


def test_a_draining_close_lets_running_and_queued_calls_finish_and_refuses_new_ones(tmp_path):
    gate, marker = str(tmp_path / "gate"), str(tmp_path / "running")
    pool = Pool(Toolbox, size=1).start()
    pids = [w["pid"] for w in pool.stats()["worker_info"]]
    running, ran = _in_thread(pool.execute, "gate", {"path": gate, "marker": marker, "value": 7})
    wait_for(lambda: os.path.exists(marker))
    queued, got = _in_thread(pool.execute, "add", {"a": 1})
    wait_for(lambda: pool.stats()["waiting"] == 1)

    closer, closed = _in_thread(pool.close, wait=True)
    wait_for(lambda: "draining" in repr(pool))
    for call in (
        lambda: pool.execute("add", {"a": 1}),
        lambda: pool.stream("count", {"n": 1}),
        lambda: list(pool.map("add", [{"a": 1}])),
        lambda: pool.serve("127.0.0.1:0"),
    ):
        error = _refused(call)
        assert (error.category, error.reason) == ("pool", "pool_closed") and "draining" in error.message
    assert not pool.serving
    assert closer.is_alive() and not ran and not got  # the drain waits: the gate is shut

    open(gate, "w").close()
    _ended(running, queued, closer)
    assert ran == [("ok", 7)] and got == [("ok", 2)] and closed == [("ok", None)]
    assert "closed" in repr(pool)
    assert not any(psutil.pid_exists(pid) for pid in pids)  # exited and reaped, as after close()
    assert _refused(lambda: pool.execute("add", {"a": 1})).reason == "pool_closed"


def test_a_draining_close_with_nothing_running_returns_at_once():
    pool = Pool(Toolbox, size=1).start()
    began = time.monotonic()
    pool.close(wait=True)
    assert time.monotonic() - began < 25  # the shutdown alone (5 s of shutdown_timeout at most), with headroom
    assert "closed" in repr(pool)
    pool.close(wait=True)  # idempotent too
    Pool(Toolbox, size=1).close(wait=True)  # never started: nothing to drain


def test_drain_timeout_cancels_what_is_left_as_close_does(tmp_path):
    gate, marker = str(tmp_path / "never"), str(tmp_path / "running")
    pool = Pool(Toolbox, size=1).start()
    running, ran = _in_thread(pool.execute, "gate", {"path": gate, "marker": marker})
    wait_for(lambda: os.path.exists(marker))
    queued, got = _in_thread(pool.execute, "add", {"a": 1})
    wait_for(lambda: pool.stats()["waiting"] == 1)
    began = time.monotonic()
    pool.close(wait=True, drain_timeout=0.5)
    elapsed = time.monotonic() - began
    _ended(running, queued)
    assert 0.5 <= elapsed < 25  # waited for the drain, then the tool was interrupted at once
    for [(kind, error)] in (ran, got):
        assert kind == "error" and isinstance(error, SnakepitError), error
        assert (error.category, error.reason) == ("pool", "pool_closed")


@pytest.mark.parametrize("second", ["close", "close_wait_with_timeout"])
def test_a_second_close_during_a_drain_ends_it(second, tmp_path):
    """A close() cancels at once; a close(wait=True, drain_timeout=...) joins the drain and ends
    it at its own deadline. Neither deadlocks with the first, which returns too."""
    gate, marker = str(tmp_path / "never"), str(tmp_path / "running")
    pool = Pool(Toolbox, size=1).start()
    running, ran = _in_thread(pool.execute, "gate", {"path": gate, "marker": marker})
    wait_for(lambda: os.path.exists(marker))
    first, first_closed = _in_thread(pool.close, wait=True)
    wait_for(lambda: "draining" in repr(pool))
    began = time.monotonic()
    if second == "close":
        pool.close()
    else:
        pool.close(wait=True, drain_timeout=0.3)
    assert time.monotonic() - began < 25
    _ended(running, first)
    assert first_closed == [("ok", None)] and "closed" in repr(pool)
    [(kind, error)] = ran
    assert kind == "error" and isinstance(error, SnakepitError) and error.reason == "pool_closed", error


def test_a_stream_in_progress_completes_under_a_drain(tmp_path):
    gate, marker = str(tmp_path / "gate"), str(tmp_path / "streaming")
    pool = Pool(Toolbox, size=1).start()

    def consume() -> tuple[list[int], int]:
        stream = pool.stream("gated_count", {"path": gate, "n": 5, "marker": marker})
        chunks = list(stream)
        return chunks, stream.result.chunks

    consumer, consumed = _in_thread(consume)
    wait_for(lambda: os.path.exists(marker))  # the first chunk is out, the rest waits for the gate
    closer, closed = _in_thread(pool.close, wait=True)
    wait_for(lambda: "draining" in repr(pool))
    open(gate, "w").close()
    _ended(consumer, closer)
    assert consumed == [("ok", ([0, 1, 2, 3, 4], 5))] and closed == [("ok", None)]


def test_joining_a_drain_from_inside_a_call_it_waits_for_is_refused():
    pool = Pool(Toolbox, size=1).start()
    stream = pool.stream("count", {"n": 3})
    first = next(stream)
    closer, closed = _in_thread(pool.close, wait=True)
    wait_for(lambda: "draining" in repr(pool))
    assert _refused(lambda: pool.close(wait=True)).reason == "invalid_arguments"
    assert [first, *stream] == [{"number": i, "is_last": i == 2} for i in range(3)]  # the stream goes on
    _ended(closer)
    assert closed == [("ok", None)] and "closed" in repr(pool)


def test_a_drain_runs_no_idempotent_call_again(tmp_path):
    """Running it again would be a new call, which the drain refuses: its caller gets the crash."""
    gate, marker = str(tmp_path / "gate"), str(tmp_path / "running")
    pool = Pool(Toolbox, size=2).start()
    running, ran = _in_thread(pool.execute, "crash_at_gate", {"path": gate, "marker": marker})
    wait_for(lambda: os.path.exists(marker))
    closer, closed = _in_thread(pool.close, wait=True)
    wait_for(lambda: "draining" in repr(pool))
    open(gate, "w").close()
    _ended(running, closer)
    [(kind, error)] = ran
    assert kind == "error" and isinstance(error, SnakepitError) and error.reason == "worker_crashed", error
    assert pool.stats()["retries"] == 0 and closed == [("ok", None)]


@pytest.mark.parametrize("driver", ["map", "amap"])
def test_a_drain_lets_the_items_a_map_has_read_finish_then_refuses_the_rest(driver, tmp_path):
    """The map reads no more of its input once the pool drains: the items it had read (its
    dispatched batches) run and are yielded in order, then the map raises pool_closed."""
    gate = str(tmp_path / "gate")
    read: list[int] = []

    def items():
        for i in itertools.count():
            read.append(i)
            yield {"path": gate, "marker": str(tmp_path / f"running-{i}"), "value": i}

    pool = Pool(Toolbox, size=2).start()
    results: list[int] = []

    def consume() -> None:
        if driver == "map":
            results.extend(pool.map("gate", items(), chunksize=1))
            return

        async def main() -> None:
            async for value in pool.amap("gate", items(), chunksize=1):
                results.append(value)

        asyncio.run(main())

    consumer, consumed = _in_thread(consume)
    wait_for(lambda: len(list(tmp_path.glob("running-*"))) == 2)  # each worker runs an item
    closer, closed = _in_thread(pool.close, wait=True)
    wait_for(lambda: "draining" in repr(pool))
    open(gate, "w").close()
    _ended(consumer, closer)
    [(kind, error)] = consumed
    assert kind == "error" and isinstance(error, SnakepitError) and error.reason == "pool_closed", error
    assert len(results) >= 2 and results == read == list(range(len(results)))
    assert closed == [("ok", None)]


def test_invalid_drain_options_are_invalid_arguments_and_change_nothing():
    pool = Pool(Toolbox, size=1).start()
    try:
        for kwargs in (
            {"wait": True, "drain_timeout": -1},
            {"wait": True, "drain_timeout": float("nan")},
            {"wait": True, "drain_timeout": "5"},
            {"wait": True, "drain_timeout": True},
            {"drain_timeout": 5},  # a drain_timeout without wait=True
            {"wait": "yes"},
        ):
            error = _refused(lambda kwargs=kwargs: pool.close(**kwargs))
            assert (error.category, error.reason) == ("validation", "invalid_arguments"), kwargs
            assert "running" in repr(pool)
        assert pool.execute("add", {"a": 1}) == 2
        pool.close(wait=True, drain_timeout=math.inf)  # no limit, as for every timeout
        assert "closed" in repr(pool)
    finally:
        pool.close()
    other = Pool(Toolbox, size=1).start()
    other.close(wait=True, drain_timeout=0)  # zero: no waiting
    assert "closed" in repr(other)


def test_a_drain_from_inside_the_pools_own_call_is_refused_and_one_from_on_event_works(tmp_path):
    """The drain would wait for the very call whose callback (or loop) asks for it: refused.
    An event handler holds no call: its drain waits for the others, without deadlock."""
    pool = Pool(Toolbox, size=2).start()
    seen: list[SnakepitError] = []

    def callback(chunk: object) -> object:
        seen.append(_refused(lambda: pool.close(wait=True)))
        return HALT

    assert pool.execute_stream("count", {"n": 3}, callback).halted
    for _ in pool.stream("count", {"n": 3}):
        seen.append(_refused(lambda: pool.close(wait=True)))
        break
    for _ in pool.map("add", [{"a": i} for i in range(8)]):
        seen.append(_refused(lambda: pool.close(wait=True)))
        break
    assert len(seen) == 3
    for error in seen:
        assert error.reason == "invalid_arguments" and "inside" in error.message
    assert "running" in repr(pool) and pool.execute("add", {"a": 1}) == 2

    gate, marker = str(tmp_path / "gate"), str(tmp_path / "running")
    steps: list[str] = []

    def on_event(event: dict) -> None:
        if event["event"] == "worker_exit" and not steps:
            steps.append("draining")
            pool.close(wait=True)
            steps.append("closed")

    pool.subscribe(on_event)
    running, ran = _in_thread(pool.execute, "gate", {"path": gate, "marker": marker, "value": 3})
    wait_for(lambda: os.path.exists(marker))
    assert _refused(lambda: pool.execute("crash")).reason == "worker_crashed"  # its worker_exit starts the drain
    wait_for(lambda: "draining" in repr(pool))
    open(gate, "w").close()
    _ended(running)
    wait_for(lambda: steps == ["draining", "closed"])
    assert ran == [("ok", 3)] and "closed" in repr(pool)

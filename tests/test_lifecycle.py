"""Pool life cycle against real processes: start, close, crashes, replacement, adapters' travel."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
import time

import psutil
import pytest
from helpers import FailingInit, Toolbox, wait_for

from snakepit import BaseAdapter, Pool, SnakepitError, tool


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
        states = [pool.execute("state") for _ in range(9)]
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

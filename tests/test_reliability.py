"""Defects a red-team pass found, each kept as a test that fails without its fix: lost results,
deadlocks, workers lost for good, deep values, stream deadlines, and the smaller ones."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import Faulty, Toolbox, await_for, wait_for

from snakepit import Pool, SnakepitError


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _depth(value: list) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


# -- 1. a cancel names exactly the calls it cancels -----------------------------------------------


def test_breaking_out_of_a_map_cancels_only_the_maps_own_batches():
    """Calls that waited while a map held the only worker, and drew their ids before the map's
    later batches, were taken for cancelled by the map's cancel: an empty result, a false
    pool_closed."""
    with Pool(Toolbox, size=1) as pool, ThreadPoolExecutor(2) as callers:
        results = pool.map("sleep", ({"seconds": 0.05} for _ in range(1000)), chunksize=1)
        next(results)  # the map holds the worker
        execute = callers.submit(pool.execute, "count", {"n": 3})
        stream = callers.submit(lambda: list(pool.stream("count", {"n": 3})))
        wait_for(lambda: pool.stats()["waiting"] == 2)
        for _ in range(3):  # newer batches go out while both calls wait
            next(results)
        results.close()  # break: the map cancels what it has queued
        expected = [{"number": i, "is_last": i == 2} for i in range(3)]
        assert execute.result(timeout=10) == expected
        assert stream.result(timeout=10) == expected


def test_many_threads_with_early_map_breaks_lose_no_result():
    with Pool(Toolbox, size=1) as pool:
        stop = time.monotonic() + 3.0
        failures: list[object] = []
        done = [0]

        def call(kind: str) -> None:
            while time.monotonic() < stop:
                try:
                    got = pool.execute("count", {"n": 3}) if kind == "execute" else list(pool.stream("count", {"n": 3}))
                except SnakepitError as exc:
                    if exc.reason != "queue_timeout":
                        failures.append(exc)
                    continue
                if len(got) != 3:
                    failures.append(got)
                done[0] += 1

        def mapper() -> None:
            while time.monotonic() < stop:
                for i, _ in enumerate(pool.map("add", ({"a": i} for i in range(1000)), chunksize=1)):
                    if i == 3:
                        break

        threads = [threading.Thread(target=call, args=(kind,)) for kind in ("execute", "stream") * 3]
        threads += [threading.Thread(target=mapper) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not failures, failures[:5]
        assert done[0] > 50


# -- 2. no user code under a pool lock --------------------------------------------------------------


def test_an_event_callback_reading_stats_deadlocks_nothing():
    """A metrics exporter's on_event reads pool.stats(); the events raised while a call waits
    (queue_timeout, pool_saturated, a timeout in the queue) once ran under the dispatcher's lock."""
    seen: list[tuple[str, int]] = []
    pool = Pool(
        Toolbox,
        size=1,
        max_queue=1,
        queue_timeout=0.3,
        on_event=lambda event: seen.append((event["event"], pool.stats()["workers"])),
    )

    def scenario() -> None:
        with pool:
            with ThreadPoolExecutor(3) as callers:
                busy = callers.submit(pool.execute, "sleep", {"seconds": 1.5})
                wait_for(lambda: pool.stats()["busy"] == 1)
                waiting = callers.submit(pool.execute, "add", {"a": 1})  # waits, then queue_timeout
                wait_for(lambda: pool.stats()["waiting"] == 1)
                with pytest.raises(SnakepitError) as saturated:
                    pool.execute("add", {"a": 1})
                assert saturated.value.reason == "pool_saturated"
                with pytest.raises(SnakepitError) as queued:
                    waiting.result(timeout=10)
                assert queued.value.reason == "queue_timeout"
                with pytest.raises(SnakepitError) as timed_out:
                    pool.execute("add", {"a": 1}, timeout=0.1)  # times out while waiting
                assert timed_out.value.reason == "timeout"
                assert busy.result(timeout=10) == 1.5

    runner = threading.Thread(target=scenario, daemon=True)
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive(), "deadlocked"
    assert {"pool_saturated", "queue_timeout", "timeout"} <= {name for name, _ in seen}
    assert all(workers == 1 for name, workers in seen if name in {"pool_saturated", "queue_timeout", "timeout"})


def test_on_event_is_a_pool_option_whose_callback_may_call_the_pool():
    seen: list[int] = []
    holder: list[Pool] = []
    with Pool(Toolbox, size=1, on_event=lambda event: seen.append(holder[0].stats()["size"]) if holder else None) as pool:
        holder.append(pool)
        os.kill(pool.execute("state")["pid"], signal.SIGKILL)  # worker_exit, worker_restart... on the supervisor thread
        wait_for(lambda: pool.stats()["restarts"] == 1 and pool.stats()["workers"] == 1)
        wait_for(lambda: len(seen) >= 3)
    assert set(seen) == {1}


def test_an_event_callback_that_blocks_does_not_stall_supervision():
    release = threading.Event()

    def slow_exporter(event: dict) -> None:
        if event["event"] == "worker_exit":
            release.wait(20)

    try:
        with Pool(Toolbox, size=2, on_event=slow_exporter) as pool:
            victim = pool.execute("state")["pid"]
            os.kill(victim, signal.SIGKILL)  # its worker_exit event blocks the callback
            wait_for(lambda: pool.stats()["restarts"] == 1 and pool.stats()["workers"] == 2)
            assert sum(pool.map("add", [{"a": i} for i in range(100)])) == sum(range(1, 101))
            release.set()
    finally:
        release.set()


def test_an_event_callback_may_close_the_pool(tmp_path, monkeypatch):
    marker = tmp_path / "cleanup"
    monkeypatch.setenv("SNAKEPIT_TEST_CLEANUP_FILE", str(marker))
    closed = threading.Event()
    holder: list[Pool] = []

    def on_event(event: dict) -> None:
        if event["event"] == "worker_exit" and not event["expected"]:
            holder[0].close()
            closed.set()

    pool = Pool(Toolbox, size=2, on_event=on_event)
    holder.append(pool)
    pool.start()
    with pytest.raises(SnakepitError):
        pool.execute("crash")
    assert closed.wait(10)
    assert marker.read_text().split()  # a graceful close: the surviving worker ran cleanup()


def test_fire_and_forget_async_calls_that_wait_in_the_queue_complete():
    """Tasks whose only reference is their wait in the pool's queue (no one keeps the task) must
    not be collected while they wait."""
    done: list[int] = []

    async def job(i: int) -> None:
        await pool.aexecute("sleep", {"seconds": 0.1})
        done.append(i)

    async def main() -> None:
        for i in range(4):
            asyncio.get_running_loop().create_task(job(i))  # no reference kept
        await await_for(lambda: pool.stats()["busy"] + pool.stats()["waiting"] == 4)
        gc.collect()
        while len(done) < 4:
            await asyncio.sleep(0.05)

    with Pool(Toolbox, size=1, timeout=None, queue_timeout=None) as pool:
        asyncio.run(asyncio.wait_for(main(), 20))
    assert sorted(done) == [0, 1, 2, 3]


def test_an_owner_back_from_the_dead_does_not_take_its_reclaimed_worker_back():
    """An amap dropped in a reference cycle: the collector clears weak references to its engine
    (the audit takes the worker back and hands it on), then asyncio revives the generator and
    closes it, which abandons the worker again. Under its stale lease that is ignored: the
    worker's new caller keeps it."""
    outcome: dict = {}

    def other_caller() -> None:
        outcome["value"] = pool.execute("sleep", {"seconds": 1.0})

    async def main() -> None:
        agen = pool.amap("sleep", [{"seconds": 0.3}] * 6, chunksize=1)
        assert await agen.__anext__() == 0.3
        box: list = [agen]
        box.append(box)  # a cycle, as a traceback or a self-reference makes
        del agen, box
        other.start()
        wait_for(lambda: pool.stats()["waiting"] == 1)
        gc.collect()  # the engine's weak reference is cleared; aclose() is scheduled on this loop
        wait_for(lambda: "worker_reclaimed" in events, timeout=10)  # the audit took it back meanwhile
        await asyncio.sleep(0)  # aclose() runs now
        await asyncio.sleep(0.1)

    events: list[str] = []
    with Pool(Toolbox, size=1, heartbeat_interval=0.2, on_event=lambda event: events.append(event["event"])) as pool:
        other = threading.Thread(target=other_caller)
        asyncio.run(main())
        other.join(10)
        assert outcome == {"value": 1.0}
        assert "cancel_timeout" not in events and pool.stats()["restarts"] == 0


def test_a_stream_dropped_during_a_collection_inside_a_pool_call_does_not_deadlock():
    """``Stream.__del__`` ran the cancel inline, taking the dispatcher's lock: a collection that
    happens while this thread holds it (inside a checkout) deadlocked. It is handed over now."""
    import gc

    with Pool(Toolbox, size=2) as pool:
        lock = pool._dispatcher.lock

        class Cycle:
            pass

        def run() -> None:
            stream = pool.stream("guarded", {"delay": 0.01})
            next(stream)
            cycle = Cycle()
            cycle.self, cycle.stream = cycle, stream  # collected only by the cyclic collector
            del stream, cycle
            with lock:  # as a checkout would hold it when the collector runs
                gc.collect()

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(timeout=10)
        assert not runner.is_alive(), "deadlocked"
        wait_for(lambda: pool.stats()["available"] == 2)  # the stream was cancelled and drained
        assert pool.execute("state")["closed_streams"] in (0, 1)


def test_a_stream_dropped_after_its_pool_closed_releases_the_workers_descriptors():
    import gc

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    for _ in range(3):
        pool = Pool(Toolbox, size=1).start()
        stream = pool.stream("count", {"n": 100_000, "delay": 0.01})
        next(stream)
        pool.close()
        del stream, pool
        gc.collect()
    wait_for(lambda: fds() == before, timeout=5)


# -- 3. whatever interrupts a call, its worker comes back --------------------------------------------


def _main_thread_in_snakepit() -> bool:
    """Whether the main thread is inside the pool's code now (in a call, or blocked in one)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    return frame is not None and f"{os.sep}snakepit{os.sep}" in frame.f_code.co_filename


@contextlib.contextmanager
def _ctrl_c_once(ready: Callable[[], bool]) -> Iterator[None]:
    """Ctrl-C for this (the main) thread once ``ready()`` holds: a real SIGINT, which also
    interrupts a blocking wait, raising KeyboardInterrupt inside this block and nowhere else.

    A handler of the test's own stands in for Python's while the block runs: it raises only
    while armed, so a signal that lands late (a loaded machine) is ignored, never a Ctrl-C of the
    test run. The signal goes to this process's main thread alone (``pthread_kill``)."""
    main = threading.main_thread().ident
    armed, done = threading.Event(), threading.Event()
    armed.set()

    def handler(signum: int, frame: Any) -> None:
        if armed.is_set():
            armed.clear()
            raise KeyboardInterrupt

    def fire() -> None:
        deadline = time.monotonic() + 30
        while not ready() and not done.is_set() and time.monotonic() < deadline:
            done.wait(0.01)
        while armed.is_set() and not done.is_set():  # until the handler has run
            signal.pthread_kill(main, signal.SIGINT)
            done.wait(0.05)

    previous = signal.signal(signal.SIGINT, handler)
    firing = threading.Thread(target=fire, name="ctrl-c")
    firing.start()
    try:
        yield
    finally:
        armed.clear()
        done.set()
        firing.join()
        time.sleep(0.01)  # a signal sent before the join runs its (disarmed) handler here
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_ctrl_c_while_a_call_runs_gives_the_worker_back():
    with Pool(Faulty, size=1, queue_timeout=2.0) as pool:
        worker = pool.execute("pid")
        with _ctrl_c_once(lambda: pool.stats()["busy"] == 1), pytest.raises(KeyboardInterrupt):
            pool.execute("blocked", {"how": "sleep", "seconds": 30})
        assert pool.execute("counters") == {"pid": worker, "finished_calls": 1, "closed_streams": 0}


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_ctrl_c_while_waiting_for_a_worker_withdraws_the_ticket():
    with Pool(Faulty, size=1, queue_timeout=5.0) as pool, ThreadPoolExecutor(1) as other:
        busy = other.submit(pool.execute, "sleep", {"seconds": 0.8})
        wait_for(lambda: pool.stats()["busy"] == 1)
        with _ctrl_c_once(lambda: pool.stats()["waiting"] == 1), pytest.raises(KeyboardInterrupt):
            pool.execute("pid")
        assert pool.stats()["waiting"] == 0
        busy.result(timeout=10)
        assert pool.execute("pid", timeout=3) > 0  # the withdrawn ticket did not take the worker
        assert pool.stats()["available"] == 1


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_ctrl_c_while_iterating_a_stream_gives_the_worker_back():
    with Pool(Faulty, size=1, queue_timeout=2.0) as pool:
        worker = pool.execute("pid")
        stream = pool.stream("blocked_stream", {"seconds": 30})
        assert next(stream) == 0
        with _ctrl_c_once(_main_thread_in_snakepit), pytest.raises(KeyboardInterrupt):
            next(stream)
        assert pool.execute("counters") == {"pid": worker, "finished_calls": 0, "closed_streams": 1}


class _Interrupt(BaseException):
    pass


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # strikes in __del__s, by design
@pytest.mark.parametrize("api", ["execute", "stream", "map"])
def test_interruptions_anywhere_in_a_call_lose_no_worker(api):
    """A signal handler that raises (as Ctrl-C does) can strike a caller anywhere, also inside
    the pool's own steps and its repair handlers. Here one strikes at random moments, every
    10-400 us, thousands of times: whatever it left half-done, every worker comes back (drained,
    reclaimed by the supervisor's audit, or replaced) and the pool serves at full size.

    (Not asyncio: asyncio.run does not survive exceptions raised inside its own loop machinery,
    and under asyncio.run Ctrl-C cancels the main task instead; test_async covers cancellation.)"""
    armed = threading.Event()
    running = True

    def interrupt(signum, frame):
        if armed.is_set():
            raise _Interrupt()

    def strike() -> None:
        main = threading.main_thread().ident
        while running:
            if armed.wait(0.1):
                time.sleep(random.uniform(0.00001, 0.0004))
                signal.pthread_kill(main, signal.SIGUSR1)

    calls = {
        "execute": lambda pool: pool.execute("add", {"a": 1}),
        "stream": lambda pool: list(pool.stream("count", {"n": 3})),
        "map": lambda pool: list(pool.map("add", [{"a": i} for i in range(5)])),
    }
    call = calls[api]
    previous = signal.signal(signal.SIGUSR1, interrupt)
    # A strike inside a __del__ (or a generator closed by the collector) is "unraisable". Drop it:
    # pytest's own hook would keep its traceback, and with it the frames of the interrupted call
    # and the owner of its worker, alive until teardown -- which no real program does.
    previous_hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    striker = threading.Thread(target=strike, daemon=True)
    striker.start()
    interrupted = 0
    try:
        with Pool(Toolbox, size=2, queue_timeout=2.0, heartbeat_interval=0.2, cancel_grace=1.0, kill_grace=0.3) as pool:
            stop = time.monotonic() + 3.0
            while time.monotonic() < stop:
                try:
                    try:
                        armed.set()
                        call(pool)
                    finally:
                        armed.clear()
                except _Interrupt:
                    interrupted += 1
                except SnakepitError:
                    pass
            gc.collect()
            try:
                wait_for(lambda: pool.stats()["available"] == 2, timeout=15)
            except AssertionError:
                raise AssertionError(f"workers not back: {pool.stats()['worker_info']} {pool._dispatcher.workers}") from None
            assert call(pool) is not None and pool.stats()["available"] == 2
        assert interrupted > 50
    finally:
        armed.clear()
        running = False
        striker.join(5)
        signal.signal(signal.SIGUSR1, previous)
        sys.unraisablehook = previous_hook


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 10**400, threading.TIMEOUT_MAX, 3e6])
def test_huge_timeouts_mean_no_limit(timeout, pool):
    assert pool.execute("add", {"a": 1}, timeout=timeout) == 2
    assert list(pool.stream("count", {"n": 2}, timeout=timeout))[-1]["is_last"]
    assert list(pool.map("add", [{"a": 1}], timeout=timeout)) == [2]
    assert asyncio.run(pool.aexecute("add", {"a": 1}, timeout=timeout)) == 2


@pytest.mark.parametrize("timeout", [math.nan, 0, -1, -math.inf, "1", True])
def test_nan_zero_and_negative_timeouts_are_invalid_arguments(timeout, pool):
    calls = [
        lambda: pool.execute("add", {"a": 1}, timeout=timeout),
        lambda: pool.stream("count", {"n": 1}, timeout=timeout),
        lambda: pool.map("add", [{"a": 1}], timeout=timeout),
        lambda: asyncio.run(pool.aexecute("add", {"a": 1}, timeout=timeout)),
    ]
    for call in calls:
        with pytest.raises(SnakepitError) as info:
            call()
        assert (info.value.category, info.value.reason) == ("validation", "invalid_arguments")
    assert pool.execute("add", {"a": 1}) == 2 and pool.stats()["available"] == 2


def test_a_pool_without_limits():
    limits = dict(start_timeout=1e10, cancel_grace=math.inf, shutdown_timeout=None, heartbeat_timeout=math.inf)
    with Pool(Toolbox, size=1, timeout=None, queue_timeout=math.inf, **limits) as pool:
        assert pool.execute("add", {"a": 1}) == 2
        assert list(pool.map("add", [{"a": 1}])) == [2]


MEMORY_ERROR_OWNER = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, "tests")
    from helpers import Toolbox
    from snakepit import Pool

    with Pool(Toolbox, size=1, queue_timeout=30) as pool:
        worker = pool.execute("state")["pid"]
        with open("/proc/self/status") as status:
            vm = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + (200 << 20), hard))
        try:
            pool.execute("big", {"size": 400 << 20})
        except MemoryError:
            print("MemoryError")
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print(pool.execute("add", {"a": 1}), pool.execute("state")["pid"] != worker, flush=True)
    """
)


def test_a_memory_error_receiving_a_big_result_replaces_the_worker():
    """The frame was half read when the owner ran out of memory: that worker's pipe cannot be
    read on, so it is replaced, and the pool keeps its size."""
    owner = subprocess.run([sys.executable, "-c", MEMORY_ERROR_OWNER], capture_output=True, text=True, timeout=60)
    assert owner.stdout.split() == ["MemoryError", "2", "True"], owner.stderr[-2000:]


def test_callers_do_not_wait_for_a_stuck_workers_grace_when_another_can_serve_them():
    with Pool(Faulty, size=2, cancel_grace=5.0, shutdown_timeout=1.0) as pool, ThreadPoolExecutor(2) as callers:
        stuck = callers.submit(pool.execute, "c_sleep", {"seconds": 30}, timeout=0.3)  # killed only after 5 s
        with pytest.raises(SnakepitError) as info:
            stuck.result(timeout=10)
        assert info.value.reason == "timeout"
        busy = callers.submit(pool.execute, "sleep", {"seconds": 0.5})
        wait_for(lambda: pool.stats()["busy"] == 2)  # one draining, one running
        started = time.monotonic()
        assert pool.execute("pid") > 0  # served by the other worker once it is free
        assert time.monotonic() - started < 2.5
        assert busy.result(timeout=10) == 0.5


def test_closing_the_pool_during_a_map_interrupts_the_running_batch_and_runs_cleanup(tmp_path, monkeypatch):
    """close() cancelled only the last batch sent, not the one running behind it: the worker was
    terminated after shutdown_timeout without running cleanup()."""
    marker = tmp_path / "cleanup"
    monkeypatch.setenv("SNAKEPIT_TEST_CLEANUP_FILE", str(marker))
    pool = Pool(Toolbox, size=1, shutdown_timeout=5.0).start()
    worker = pool.execute("state")["pid"]
    with ThreadPoolExecutor(1) as caller:
        mapping = caller.submit(lambda: list(pool.map("sleep", [{"seconds": 30}] * 4, chunksize=1, return_exceptions=True)))
        wait_for(lambda: pool.stats()["busy"] == 1)
        time.sleep(0.2)  # the map has its next batch queued behind the running one
        started = time.monotonic()
        pool.close()
        assert time.monotonic() - started < 2.5  # not shutdown_timeout
        with pytest.raises(SnakepitError) as info:
            mapping.result(timeout=10)
        assert info.value.reason == "pool_closed"
    assert marker.read_text().split() == [str(worker)]  # cleanup() ran


# -- 4. deep values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [300, 400])
def test_deep_values_travel_both_ways(depth, single_pool):
    worker = single_pool.execute("state")["pid"]
    value = _deep(depth)
    assert _depth(single_pool.execute("echo", {"value": value})) == depth
    assert _depth(next(iter(single_pool.stream("stream_values", {"values": [value]})))) == depth
    assert [_depth(v) for v in single_pool.map("echo", [{"value": value}] * 3)] == [depth] * 3
    assert single_pool.execute("state")["pid"] == worker


def test_values_too_deep_for_any_encoding_are_serialization_errors(single_pool):
    worker = single_pool.execute("state")["pid"]
    with pytest.raises(SnakepitError) as info:  # as an argument
        single_pool.execute("echo", {"value": _deep(5000)})
    assert info.value.reason == "serialization_error"
    with pytest.raises(SnakepitError) as info:  # as a result
        single_pool.execute("deep", {"depth": 5000})
    assert (info.value.category, info.value.reason) == ("validation", "serialization_error")
    with pytest.raises(SnakepitError) as info:  # as a chunk
        list(single_pool.stream("deep_chunks", {"depth": 5000}))
    assert info.value.reason == "serialization_error"
    assert single_pool.execute("state")["pid"] == worker and single_pool.stats()["restarts"] == 0


# -- 5. a stream's deadline holds while chunks keep coming ---------------------------------------------


def test_a_stream_read_slowly_times_out_at_its_deadline():
    with Pool(Faulty, size=1) as pool:
        worker = pool.execute("pid")
        started = time.monotonic()
        received = 0
        with pytest.raises(SnakepitError) as info:
            for _ in pool.stream("guarded", {"delay": 0.001}, timeout=1.0):
                received += 1
                time.sleep(0.002)  # a little slower than the generator
        elapsed = time.monotonic() - started
        assert info.value.reason == "timeout" and received > 10
        assert 1.0 <= elapsed < 1.0 + 2.0  # at the deadline: the stream alone would run for minutes
        assert pool.execute("closed") == 1 and pool.execute("pid") == worker


def test_execute_stream_with_a_slow_callback_times_out_instead_of_the_next_chunk():
    with Pool(Faulty, size=1) as pool:
        delivered = []
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.execute_stream("count", {"n": 10}, lambda chunk: (delivered.append(chunk), time.sleep(0.4)), timeout=1.0)
        elapsed = time.monotonic() - started
        assert info.value.reason == "timeout"
        # Chunks at 0, 0.4, 0.8 s (fewer if the machine is loaded); all ten would take 4 s.
        assert 1 <= len(delivered) <= 3 and elapsed < 1.0 + 2.0


def test_an_async_stream_read_slowly_times_out_at_its_deadline():
    with Pool(Faulty, size=1) as pool:

        async def main() -> int:
            received = 0
            with pytest.raises(SnakepitError) as info:
                async for _ in pool.astream("guarded", {"delay": 0.001}, timeout=1.0):
                    received += 1
                    await asyncio.sleep(0.002)
            assert info.value.reason == "timeout"
            return received

        started = time.monotonic()
        assert asyncio.run(main()) > 10
        assert time.monotonic() - started < 1.0 + 2.0  # at the deadline: the stream alone would run for minutes
        assert pool.execute("closed") == 1


# -- 6. what a tool starts ends with its worker ----------------------------------------------------

SPAWNS = ["popen", "session", "fork", "daemon"]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _spawned(record) -> list[int]:
    return [int(line) for line in record.read_text().split()] if record.exists() else []


def _reap_strays(pids: list[int]) -> None:
    """Kill what a failing test left behind (init reaps them: they are not our children)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("end", ["close", "recycle"])
def test_processes_a_tool_started_end_when_its_worker_shuts_down(end):
    pids: list[int] = []
    try:
        # max_requests: the worker is recycled after the call that follows the spawns
        with Pool("helpers:Spawner", size=1, max_requests=len(SPAWNS) + 2 if end == "recycle" else None) as pool:
            worker = pool.execute("pid")
            pids = [pool.execute("spawn", {"how": how}) for how in SPAWNS]
            assert all(_alive(pid) for pid in pids)
            if end == "recycle":
                assert pool.execute("pid") == worker
                assert pool.execute("pid") != worker
                wait_for(lambda: not any(_alive(pid) for pid in pids))
        wait_for(lambda: not any(_alive(pid) for pid in pids))  # even one in a session of its own
    finally:
        _reap_strays(pids)


@pytest.mark.parametrize("how", SPAWNS)
def test_processes_a_tool_started_end_when_its_worker_is_killed_for_a_timeout(how, tmp_path, monkeypatch):
    record = tmp_path / "spawned"
    monkeypatch.setenv("SNAKEPIT_TEST_SPAWNED", str(record))
    try:
        with Pool("helpers:Spawner", size=1, cancel_grace=0.3, kill_grace=0.3) as pool:
            with pytest.raises(SnakepitError) as info:
                pool.execute("spawn", {"how": how, "then": "c_sleep"}, timeout=1.0)
            assert info.value.reason == "timeout"
            [pid] = _spawned(record)
            wait_for(lambda: not _alive(pid))  # the worker was alive when killed: all its tree goes
    finally:
        _reap_strays(_spawned(record))


@pytest.mark.parametrize("how", SPAWNS)
def test_processes_a_tool_started_end_when_its_worker_crashes_unless_in_their_own_session(how, tmp_path, monkeypatch):
    """After an unexpected death the worker's group is ended; a process that started a session
    of its own left the group and escapes (as the failure semantics guide says)."""
    record = tmp_path / "spawned"
    monkeypatch.setenv("SNAKEPIT_TEST_SPAWNED", str(record))
    try:
        with Pool("helpers:Spawner", size=1) as pool:
            with pytest.raises(SnakepitError) as info:
                pool.execute("spawn", {"how": how, "then": "exit"})
            assert info.value.reason == "worker_crashed"
            [pid] = _spawned(record)
            if how == "session":
                assert _alive(pid)
            else:
                wait_for(lambda: not _alive(pid))
    finally:
        _reap_strays(_spawned(record))


def _zombies(pid: int) -> int:
    import psutil

    count = 0
    for child in psutil.Process(pid).children():
        try:
            count += child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # reaped meanwhile
            pass
    return count


def test_orphans_a_worker_adopts_are_reaped():
    """A subreaper adopts the orphans of ``sh -c "cmd &"``; once they exit, it must reap them,
    or every such call leaves a zombie for the worker's lifetime."""
    with Pool("helpers:Spawner", size=1, heartbeat_interval=0.2) as pool:
        worker = pool.execute("pid")
        for _ in range(100):
            pool.execute("background")
        wait_for(lambda: pool.execute("pid") and _zombies(worker) == 0, timeout=10)  # reaped between calls


def test_a_tools_own_children_are_left_for_it_to_wait_for():
    """Only adopted orphans are reaped: the tool's own children keep their exit status for it."""
    with Pool("helpers:Spawner", size=1, heartbeat_interval=0.2) as pool:
        worker = pool.execute("pid")
        pool.execute("start_children", {"code": 3})
        wait_for(lambda: _zombies(worker) == 2)
        for _ in range(3):  # calls and idle heartbeats, each a chance to reap
            pool.execute("background")
            time.sleep(0.3)
        assert pool.execute("wait_children") == [3, 3]


def test_children_libraries_make_are_left_for_them_to_wait_for():
    """multiprocessing (spawn starts its children through _posixsubprocess) and pty.fork: their
    children exit between two calls, and must still be theirs to join and wait for."""
    with Pool("helpers:Spawner", size=1) as pool:
        worker = pool.execute("pid")
        pool.execute("start_library_children", {"seconds": 0.2}, timeout=60)
        wait_for(lambda: _zombies(worker) >= 3, timeout=20)
        for _ in range(3):  # calls, each a chance for the worker to reap adopted orphans
            pool.execute("background")
            time.sleep(0.2)
        assert pool.execute("wait_library_children") == [0, 0, 7]


SPAWNING_OWNER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, "tests")
    from snakepit import Pool

    pool = Pool("helpers:Spawner", size=2).start()
    print(" ".join(str(pool.execute("spawn", {"how": how})) for how in sys.argv[1:]), flush=True)
    time.sleep(60)
    """
)


def test_after_the_owner_is_killed_only_processes_in_a_session_of_their_own_survive():
    """Best effort: the workers die with their owner (PDEATHSIG) and the janitor ends their
    process groups; a process that started its own session has left the group."""
    owner = subprocess.Popen([sys.executable, "-c", SPAWNING_OWNER, *SPAWNS], stdout=subprocess.PIPE, text=True)
    pids = dict(zip(SPAWNS, (int(pid) for pid in owner.stdout.readline().split())))
    try:
        assert len(pids) == len(SPAWNS) and all(_alive(pid) for pid in pids.values())
        owner.kill()
        owner.wait()
        wait_for(lambda: not any(_alive(pid) for how, pid in pids.items() if how != "session"), timeout=5)
        assert _alive(pids["session"])
    finally:
        owner.kill()
        owner.wait()
        _reap_strays(list(pids.values()))


def test_a_child_the_owner_forked_does_not_delay_close():
    """The fork inherits the owner's end of the janitor's pipe: close() must not wait for its
    end-of-file."""
    pool = Pool(Toolbox, size=1).start()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked child only waits to be killed
        time.sleep(60)
        os._exit(0)
    try:
        started = time.monotonic()
        pool.close()
        assert time.monotonic() - started < 2.5
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


# -- 7. a big value's memory is given back -----------------------------------------------------------


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / (1 << 20)


def test_after_a_big_value_worker_and_owner_give_the_memory_back():
    """Big values travel through shared memory segments, which a worker keeps for reuse while a
    burst lasts and releases once unused for a second (segments.IDLE_RELEASE)."""
    import gc

    big = 256 << 20  # the finding was with 500 MB; without the fix a worker keeps all of it
    with Pool(Toolbox, size=1) as pool:
        worker = pool.execute("state")["pid"]
        pool.execute("add", {"a": 1})
        gc.collect()
        before = _rss_mb(worker), _rss_mb(os.getpid())

        def given_back() -> bool:
            gc.collect()
            return _rss_mb(worker) < before[0] + 50 and _rss_mb(os.getpid()) < before[1] + 50

        assert len(pool.execute("big", {"size": big})) == big  # a big result
        pool.execute("add", {"a": 1})
        assert wait_for(given_back, timeout=10)

        assert pool.execute("echo", {"value": b"y" * 16}) == b"y" * 16
        assert len(pool.execute("echo", {"value": bytes(big)})) == big  # a big argument (and result)
        pool.execute("add", {"a": 1})
        assert wait_for(given_back, timeout=10)

        stream = pool.stream("big_then_small", {"size": big, "small": 100_000})
        assert len(next(stream)) == big  # a big chunk, then the stream goes on
        for _ in range(200):
            next(stream)
        assert wait_for(given_back, timeout=10)
        stream.close()
        assert pool.execute("state")["pid"] == worker


# -- 8. start() fails promptly ----------------------------------------------------------------------


def test_start_fails_within_start_timeout_plus_a_second():
    started = time.monotonic()
    with pytest.raises(SnakepitError) as info:
        Pool("helpers:SlowStart", size=2, start_timeout=0.5, shutdown_timeout=5.0).start()
    assert info.value.reason == "worker_start_failed" and "start_timeout" in info.value.message
    assert time.monotonic() - started < 1.5 + 1.0  # promised: start_timeout + 1 s; slack for CI


# -- 9. smaller ------------------------------------------------------------------------------------------


def test_map_batch_timeouts_count_in_stats():
    with Pool(Faulty, size=1, cancel_grace=5.0) as pool:
        errors = list(pool.map("blocked", [{"how": "sleep"}] * 3, chunksize=3, timeout=0.3, return_exceptions=True))
        assert [error.reason for error in errors] == ["timeout"] * 3
        assert pool.stats()["timeouts"] == 3

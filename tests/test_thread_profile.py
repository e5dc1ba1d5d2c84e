"""The thread profile: ``threads_per_worker=N`` runs N calls at once in each worker process."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import wait_for
from threaded_tools import Threaded, Unsafe

from snakepit import Pool, SnakepitError

FAST = dict(cancel_grace=0.5, kill_grace=0.3, shutdown_timeout=2.0)


def _together(pool: Pool, calls: list, **kwargs) -> list:
    with ThreadPoolExecutor(len(calls)) as run:
        return list(run.map(lambda call: pool.execute(*call, **kwargs), calls))


def test_one_process_runs_n_calls_at_once_on_n_threads():
    with Pool(Threaded, size=1, threads_per_worker=3, adapter_args={"parties": 3}) as pool:
        stats = pool.stats()
        assert (stats["workers"], stats["available"], stats["worker_info"][0]["threads"]) == (1, 3, 3)
        met = _together(pool, [("meet", {})] * 3)  # the barrier opens only with all three inside
        assert len({m["pid"] for m in met}) == 1 and len({m["thread"] for m in met}) == 3
        assert pool.stats()["worker_info"][0]["requests"] == 3


def test_capacity_is_size_times_threads_and_excess_calls_queue():
    with Pool(Threaded, size=2, threads_per_worker=2, adapter_args={"parties": 2}) as pool:
        assert pool.stats()["available"] == 4
        started = time.monotonic()
        pids = _together(pool, [("wait", {"seconds": 0.4})] * 6)
        assert time.monotonic() - started >= 0.8  # 6 calls, 4 at a time: two rounds
        assert len(set(pids)) == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"adapter": Unsafe, "threads_per_worker": 2}, "thread_safe = True"),
        ({"adapter": Threaded, "threads_per_worker": 0}, "positive int"),
        ({"adapter": Threaded, "threads_per_worker": 2, "backend": "ray"}, "backend='process'"),
    ],
)
def test_the_thread_profile_is_refused_where_it_cannot_work(options, message):
    with pytest.raises(SnakepitError) as caught:
        Pool(size=1, **options)
    assert caught.value.reason == "invalid_config" and message in caught.value.message


def test_an_adapter_named_by_path_that_is_not_thread_safe_fails_to_start_saying_why():
    with pytest.raises(SnakepitError) as caught:
        Pool("threaded_tools:Unsafe", size=1, threads_per_worker=2, **FAST).start()
    assert caught.value.reason == "worker_start_failed" and "thread_safe = True" in caught.value.message


def test_sessions_pin_to_the_process_and_strict_modes_count_its_free_threads():
    with Pool(Threaded, size=2, threads_per_worker=2, adapter_args={"parties": 2}) as pool:
        pinned = pool.execute("pid", session_id="s", affinity="strict_fail_fast")
        with ThreadPoolExecutor(3) as run:
            first = run.submit(pool.execute, "wait", {"seconds": 1.0}, session_id="s", affinity="strict_fail_fast")
            wait_for(lambda: pool.stats()["busy"] == 1)
            # One thread of the session's process is busy, the other free: the call runs there.
            second = run.submit(pool.execute, "wait", {"seconds": 1.0}, session_id="s", affinity="strict_fail_fast")
            wait_for(lambda: pool.stats()["busy"] == 2)
            with pytest.raises(SnakepitError) as caught:  # both threads busy: worker_busy at once
                pool.execute("pid", session_id="s", affinity="strict_fail_fast")
            assert caught.value.reason == "worker_busy"
            queued = run.submit(pool.execute, "pid", session_id="s", affinity="strict_queue")
            assert {first.result(), second.result(), queued.result()} == {pinned}
        assert (
            pool.session("s").worker_id
            == pool.stats()["worker_info"][[w["pid"] for w in pool.stats()["worker_info"]].index(pinned)]["id"]
        )


def test_a_slow_stream_consumer_holds_back_its_own_stream_only():
    with Pool(Threaded, size=1, threads_per_worker=2) as pool:
        stream = pool.stream("flood", {"n": 1_000_000, "size": 1000})
        assert int(next(stream)) == 0
        wait_for(lambda: pool.execute("counters")["produced"] > 0)
        # The consumer reads nothing more: the worker stops within a window of frames (64, a
        # batch of small chunks being one frame of at most 64 KiB: 65 of these chunks).
        produced = _stalls(pool)
        for _ in range(20):  # meanwhile the other thread answers at once, again and again
            assert pool.execute("pid")
        assert pool.execute("counters")["produced"] == produced <= 64 * 65 + 10
        assert int(next(stream)) == 1 and sum(1 for _ in zip(range(1000), stream)) == 1000  # it resumes
        stream.close()
        wait_for(lambda: pool.execute("counters")["closed"] == 1)


def test_a_timed_out_call_is_interrupted_in_its_thread_and_the_process_lives_on():
    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as pool:
        pid = pool.execute("pid")
        with pytest.raises(SnakepitError) as caught:
            pool.execute("spin", {"seconds": 30}, timeout=0.3)
        assert caught.value.reason == "timeout"
        wait_for(lambda: pool.execute("counters")["finished"] == 1)  # its finally ran
        assert pool.execute("pid") == pid and pool.stats()["restarts"] == 0


def test_a_call_stuck_in_c_past_cancel_grace_ends_its_process_and_every_call_it_held():
    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as pool:
        pid = pool.execute("pid")
        with ThreadPoolExecutor(2) as run:
            other = run.submit(pool.execute, "wait", {"seconds": 30})
            wait_for(lambda: pool.stats()["busy"] == 1)
            with pytest.raises(SnakepitError) as caught:
                pool.execute("wait", {"seconds": 30}, timeout=0.3)  # time.sleep: no bytecode to interrupt
            assert caught.value.reason == "timeout"
            with pytest.raises(SnakepitError) as crashed:
                other.result(timeout=20)
        assert crashed.value.reason == "worker_crashed"
        wait_for(lambda: pool.stats()["available"] == 2, timeout=20)
        assert pool.execute("pid") != pid


def test_a_crash_fails_every_call_of_the_process_and_it_is_replaced():
    with Pool(Threaded, size=1, threads_per_worker=2, adapter_args={"parties": 2}, **FAST) as pool:
        with ThreadPoolExecutor(2) as run:
            waiting = run.submit(pool.execute, "wait", {"seconds": 30})
            wait_for(lambda: pool.stats()["busy"] == 1)
            with pytest.raises(SnakepitError) as caught:
                pool.execute("crash")
            assert caught.value.reason == "worker_crashed" and caught.value.details["exit_code"] == 5
            with pytest.raises(SnakepitError) as other:
                waiting.result(timeout=20)
            assert other.value.reason == "worker_crashed"
        wait_for(lambda: pool.stats()["available"] == 2, timeout=20)
        assert len(_together(pool, [("meet", {})] * 2)) == 2


def test_streams_maps_and_asyncio_work_per_call():
    async def concurrently(pool: Pool) -> list:
        return await asyncio.gather(*(pool.aexecute("meet") for _ in range(2)))

    with Pool(Threaded, size=1, threads_per_worker=2, adapter_args={"parties": 2}) as pool:
        assert list(pool.map("square", [{"x": x} for x in range(50)])) == [x * x for x in range(50)]
        assert len(asyncio.run(concurrently(pool))) == 2
        with ThreadPoolExecutor(2) as run:
            streams = list(run.map(lambda n: list(pool.stream("flood", {"n": n})), [500, 700]))
        assert [len(s) for s in streams] == [500, 700]
        with pool.stream("flood", {"n": 1_000_000}) as stream:
            for chunk in stream:
                if chunk == 10:
                    break
        wait_for(lambda: pool.execute("counters")["closed"] == 3)  # the broken-off stream's finally ran


def test_a_process_is_recycled_after_max_requests_over_all_its_threads():
    with Pool(Threaded, size=1, threads_per_worker=2, max_requests=4, **FAST) as pool:
        first = pool.execute("pid")
        for _ in range(3):
            pool.execute("pid")
        wait_for(lambda: pool.stats()["recycled"] == 1 and pool.stats()["available"] == 2, timeout=20)
        assert pool.execute("pid") != first


def test_an_idle_process_is_recycled_by_worker_ttl_with_all_its_threads():
    events: list[dict] = []
    with Pool(
        Threaded, size=1, threads_per_worker=3, worker_ttl=0.5, heartbeat_interval=0.2, on_event=events.append, **FAST
    ) as pool:
        first = pool.execute("pid")
        wait_for(lambda: pool.stats()["recycled"] >= 1, timeout=20)
        wait_for(lambda: pool.stats()["available"] == 3 and pool.execute("pid") != first, timeout=20)
    assert any(e["event"] == "worker_recycle" and e["reason"] == "worker_ttl" for e in events)


def _stalls(pool: Pool) -> int:
    """Wait until the worker has stopped producing (its stream waits for credit); how much it made."""
    last = -1
    while True:
        time.sleep(0.2)
        produced = pool.execute("counters")["produced"]
        if produced == last:
            return produced
        last = produced


def test_a_burst_of_chunks_queued_when_the_process_is_killed_is_still_delivered():
    # A thread's burst is queued in the crash-safe queue, batched, and written in bulk: the owner
    # takes what was queued but never written from the dead process's queue, in order.
    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as pool:
        for _ in range(3):
            received = []
            with pytest.raises(SnakepitError) as caught:
                for chunk in pool.stream("burst_then_die", {"n": 50_000}):
                    received.append(chunk)
            assert caught.value.reason == "worker_crashed"
            assert received == list(range(50_000))


def test_a_stream_cancelled_while_it_waits_for_credit_leaves_no_stale_shared_memory():
    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as pool:
        stream = pool.stream("blobs", {"n": 10_000})
        assert next(stream)[0] == 0
        assert _stalls(pool) <= 200  # blocked on credit, a large chunk placed and waiting
        stream.close()
        for i in (7, 8, 9):  # later shared values are their own, not the cancelled chunk's
            value = pool.execute("blob", {"i": i})
            assert len(value) == 1 << 20 and value[0] == i and value[-1] == i


def test_a_burst_of_large_chunks_is_delivered_whole_from_several_threads():
    # A large chunk's descriptors go over the socket as it enters the stream, its frame maybe into
    # the queue: a thread waiting for room on the socket must not keep the queue from the pipe,
    # whose frames are what lets the owner take the descriptors off the socket.
    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as pool:

        def firsts(_: int) -> list[int]:
            chunks = pool.stream("blobs", {"n": 200, "size": 256 << 10}, timeout=60)
            return [blob[0] for blob in chunks if len(blob) == 256 << 10]

        for _ in range(3):
            with ThreadPoolExecutor(2) as run:
                assert list(run.map(firsts, range(2))) == [list(range(200))] * 2


def test_chunks_with_metadata_count_against_the_window_too():
    with Pool(Threaded, size=1, threads_per_worker=2) as pool:
        stream = pool.stream("tagged", {"n": 1_000_000})
        for _ in zip(range(20_000), stream):  # many windows' worth of credit granted
            pass
        ahead = _stalls(pool) - 20_000
        assert ahead <= 200  # a window's worth of frames ahead of the consumer, metadata or not
        stream.close()


def test_a_stream_of_chunks_the_encoder_refuses_runs_to_its_end():
    # Each such chunk is refused, then sent pickled: only the chunk that went out counts against the window.
    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as pool:
        assert list(pool.stream("big_ints", {"n": 300}, timeout=30)) == [2**70 + i for i in range(300)]


def test_a_mapped_item_that_kills_its_process_fails_alone():
    with Pool(Threaded, size=2, threads_per_worker=4, **FAST) as pool:
        results = list(pool.map("slow_square_or_die", [{"x": i, "poison": 13} for i in range(40)], return_exceptions=True))
        failed = {i: r.reason for i, r in enumerate(results) if isinstance(r, SnakepitError)}
        assert failed == {13: "worker_crashed"}  # the items that shared its process ran again, alone
        assert [r for i, r in enumerate(results) if i != 13] == [i * i for i in range(40) if i != 13]


def test_recycled_processes_leave_no_descriptors_behind():
    import os

    def eventfds() -> int:  # a call slot's wake-up descriptor each
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
            except OSError:  # closed meanwhile
                pass
        return count

    with Pool(Threaded, size=1, threads_per_worker=4, max_requests=1, **FAST) as pool:
        pool.execute("pid")
        wait_for(lambda: pool.stats()["recycled"] >= 1 and pool.stats()["available"] == 4, timeout=30)
        before = eventfds()
        for round_ in range(2, 12):
            pool.execute("pid")
            wait_for(lambda round_=round_: pool.stats()["recycled"] >= round_ and pool.stats()["available"] == 4, timeout=30)
        # Ten recycles: at most the slots of a process still being disposed of, not ten processes' worth.
        wait_for(lambda: eventfds() <= before + 4, timeout=10)


def test_close_releases_every_descriptor_of_a_killed_process_without_the_garbage_collector():
    """Callers on every call slot, more waiting for one, the process killed under them: when
    close() returns, the dead process's whole connection (pipes, pidfd, socket, eventfds, spill
    segment) is closed -- not left to a garbage collection."""
    import gc
    import os
    import signal
    import threading

    def fds() -> list[str]:
        names = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own descriptor, closed meanwhile
                pass
        return sorted(names)

    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as warm:  # one-time state (the template's imports)
        warm.execute("pid")
    gc.collect()
    gc.disable()
    try:
        before = fds()
        pool = Pool(Threaded, size=1, threads_per_worker=4, **FAST).start()
        victim = pool.execute("pid")
        outcomes: list[str] = []

        def call() -> None:
            try:
                pool.execute("wait", {"seconds": 30})
                outcomes.append("ok")
            except SnakepitError as exc:
                outcomes.append(exc.reason)

        callers = [threading.Thread(target=call) for _ in range(7)]  # 4 running, 3 waiting
        for caller in callers:
            caller.start()
        wait_for(lambda: pool.stats()["waiting"] == 3)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: (now := pool.stats())["workers"] == 1 and now["worker_info"][0]["pid"] != victim, timeout=30)
        pool.close()  # the waiters, given the new process, get pool_closed
        for caller in callers:
            caller.join(30)
        assert sorted(outcomes) == ["pool_closed"] * 3 + ["worker_crashed"] * 4
        assert fds() == before
    finally:
        gc.enable()

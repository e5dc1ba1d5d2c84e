"""The asyncio API against real workers: same calls, waiting through the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from helpers import Faulty, GatedStart, Toolbox, await_for

from snakepit import HALT, Pool, SnakepitError

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


def test_aexecute_and_errors(pool):
    async def main():
        assert await pool.aexecute("add", {"a": 1, "b": 2}) == 3
        with pytest.raises(SnakepitError) as info:
            await pool.aexecute("fail", {"message": "async boom"})
        assert info.value.reason == "tool_exception" and "async boom" in info.value.message
        with pytest.raises(SnakepitError) as info:
            await pool.aexecute("nope")
        assert info.value.reason == "tool_not_found"
        return await asyncio.gather(*(pool.aexecute("add", {"a": i}) for i in range(40)))

    assert run(main()) == [i + 1 for i in range(40)]


def test_astream_and_aexecute_stream_with_plain_and_async_callbacks(pool):
    async def main():
        chunks = [c["number"] async for c in pool.astream("count", {"n": 5})]
        assert chunks == [0, 1, 2, 3, 4]
        async with pool.astream("with_final", {"n": 2}) as stream:
            items = [c async for c in stream]
        assert items[-1] == {"done": True} and stream.result.metadata == {"total": 2}

        seen = []
        result = await pool.aexecute_stream("count", {"n": 3}, seen.append)
        assert result.chunks == 3 and len(seen) == 3

        async def slow_consumer(chunk):
            await asyncio.sleep(0)
            seen.append(chunk)
            return HALT if chunk["number"] == 1 else None

        result = await pool.aexecute_stream("count", {"n": 100}, slow_consumer)
        assert result.halted and result.chunks == 2

    run(main())


def test_the_event_loop_is_never_blocked(pool):
    """A ticker keeps running while calls wait on slow tools."""

    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.gather(pool.aexecute("sleep", {"seconds": 0.5}), pool.aexecute("sleep", {"seconds": 0.5}))
        stop.set()
        await task
        return ticks

    assert run(main()) >= 25  # ~50 ticks of 10 ms fit in 0.5 s if nothing blocks the loop


def test_no_thread_per_call(pool):
    async def main():
        before = threading.active_count()
        tasks = [asyncio.create_task(pool.aexecute("sleep", {"seconds": 0.5})) for _ in range(10)]
        await await_for(lambda: pool.stats()["busy"] + pool.stats()["waiting"] == 10)
        during = threading.active_count()
        await asyncio.gather(*tasks)
        return before, during

    before, during = run(main())
    assert during <= before + 1  # at most asyncio's own helper, not one per waiting call


def test_cancelling_the_task_cancels_the_tool_in_the_worker():
    with Pool(Faulty, size=1, cancel_grace=5) as pool:

        async def main():
            chunks = []
            task = asyncio.create_task(pool.aexecute_stream("guarded", {"delay": 0.01}, chunks.append))
            await await_for(lambda: len(chunks) >= 3)  # the generator runs
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The same worker, reused: the generator's finally ran before this call.
            assert await pool.aexecute("closed") == 1

            async def consume():
                async for _ in pool.astream("guarded", {"delay": 0.01}):
                    pass

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(consume(), 0.2)
            assert await pool.aexecute("closed") == 2

            async with asyncio.timeout(0.2):
                async for _ in pool.astream("guarded", {"delay": 0.01}):
                    break
            assert await pool.aexecute("closed") == 3
            assert pool.stats()["restarts"] == 0

        run(main())


def test_cancelling_a_queued_call_leaves_the_queue():
    with Pool(Toolbox, size=1) as pool:

        async def main():
            busy = asyncio.create_task(pool.aexecute("sleep", {"seconds": 0.3}))
            await await_for(lambda: pool.stats()["busy"] == 1)
            waiting = asyncio.create_task(pool.aexecute("add", {"a": 1}))
            await await_for(lambda: pool.stats()["waiting"] == 1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert pool.stats()["waiting"] == 0
            assert await busy == 0.3
            assert await pool.aexecute("add", {"a": 1}) == 2

        run(main())


def test_async_timeout_and_crash():
    with Pool(Faulty, size=1, cancel_grace=5, kill_grace=0.3) as pool:

        async def main():
            started = time.monotonic()
            with pytest.raises(SnakepitError) as info:
                await pool.aexecute("spin", {}, timeout=0.3)
            # At the deadline: not after the worker's clean-up (cancel_grace, 5 s, then a kill).
            assert info.value.reason == "timeout" and time.monotonic() - started < 2.5
            with pytest.raises(SnakepitError) as info:
                await pool.aexecute("exit", {"code": 3})
            assert info.value.reason == "worker_crashed" and info.value.details["exit_code"] == 3
            assert await pool.aexecute("pid") > 0

        run(main())


def test_many_astreams_on_one_loop_interleave():
    streams, n = 3, 20_000
    with Pool(Toolbox, size=streams) as pool:

        async def main():
            # Every stream has started (its worker is producing) before the race is measured, so
            # the order below reflects the loop's fairness, not which worker the OS ran first.
            started = asyncio.Barrier(streams)
            order: list[int] = []

            async def consume(index: int):
                first = True
                async for _ in pool.astream("count", {"n": n}):
                    if first:
                        first = False
                        await started.wait()
                    else:
                        order.append(index)

            await asyncio.gather(*(consume(i) for i in range(streams)))
            return order

        order = run(main())
    assert len(order) == streams * (n - 1)
    # Fair: with chunks buffered for all of them, no stream runs to completion before the others
    # got a turn (each hands the loop back every few hundred chunks).
    first_done = min(max(i for i, who in enumerate(order) if who == k) for k in range(streams))
    assert all(order[:first_done].count(k) > 0 for k in range(streams))


def test_a_consumer_busy_elsewhere_leaves_the_loop_idle(pool):
    """While a stream's consumer awaits something else (a slow client's socket, say) with the
    worker's chunks unread in the pipe, the loop sleeps: a reader left watching a readable pipe
    would wake it on every turn, spinning a core until the consumer came back."""

    async def main():
        stream = pool.astream("count", {"n": 200_000})
        async with stream:
            await stream.__anext__()  # the worker is producing, and watched
            await asyncio.sleep(0.05)  # its pipe fills while nobody reads it
            started, used = time.monotonic(), time.thread_time()
            await asyncio.sleep(0.5)
            idle_cpu, elapsed = time.thread_time() - used, time.monotonic() - started
            rest = [chunk async for chunk in stream]  # nothing was lost meanwhile
        return idle_cpu, elapsed, rest

    idle_cpu, elapsed, rest = run(main())
    assert len(rest) == 200_000 - 1 and rest[-1]["number"] == 200_000 - 1
    # A spinning loop burns the whole wait (half of it on a machine kept busy); a sleeping one
    # a few milliseconds.
    assert idle_cpu < elapsed / 5, (idle_cpu, elapsed)


def test_sync_and_async_callers_share_one_pool():
    with Pool(Toolbox, size=2) as pool:
        results = []

        def sync_caller():
            for i in range(50):
                results.append(pool.execute("add", {"a": i}))

        thread = threading.Thread(target=sync_caller)
        thread.start()

        async def main():
            return await asyncio.gather(*(pool.aexecute("add", {"a": i}) for i in range(50)))

        async_results = run(main())
        thread.join(30)
    assert sorted(results) == list(range(1, 51)) and async_results == list(range(1, 51))


def test_session_async_methods():
    with Pool(Toolbox, size=2) as pool:

        async def main():
            session = pool.session("s", affinity="strict_queue")
            pid = (await session.aexecute("state"))["pid"]
            assert [c["number"] async for c in session.astream("count", {"n": 2})] == [0, 1]
            seen = []
            await session.aexecute_stream("count", {"n": 2}, seen.append)
            assert (await session.aexecute("state"))["pid"] == pid and len(seen) == 2

        run(main())


def test_a_stale_readers_late_unwatch_does_not_remove_its_successors():
    """A dropped stream's reader is closed late, through the loop (a garbage collection), when
    the next call on the same worker may already wait on the same pipe: the late close must not
    remove the new reader, or that call never wakes up (it hung, about once in 50 runs)."""
    from snakepit import _protocol as protocol

    with Pool(Toolbox, size=1) as pool:
        handle = pool._dispatcher.checkout_now()  # the caller's now, not the supervisor's
        conn = handle.conn

        async def main() -> bool:
            loop = asyncio.get_running_loop()
            woken = asyncio.Event()
            stale = conn.watch(loop, lambda exited: None)
            current = conn.watch(loop, lambda exited: woken.set())
            stale()  # the late close of the dropped reader
            frame = protocol.call_frame("add", {"a": 1, "b": 2}, False)
            protocol.stamp_call_id(frame, 1 << 40)
            conn.send(frame)  # the worker answers: the pipe becomes readable
            try:
                await asyncio.wait_for(woken.wait(), 10)
            finally:
                current()
            assert conn.receive(None)[0].value == 3
            return True

        try:
            assert run(main())
        finally:
            pool._dispatcher.release(handle)


def test_leaving_an_async_loop_early_cancels_a_stream_still_referenced():
    from helpers import wait_for

    with Pool(Faulty, size=1) as pool:

        async def main() -> None:
            stream = pool.astream("guarded", {"delay": 0.01})
            async for _ in stream:
                break
            wait_for(lambda: pool.execute("closed") == 1)  # though `stream` lives on
            assert [item async for item in stream] == []  # a second loop sees it cancelled

        asyncio.run(main())
        assert pool.stats()["busy"] == 0


# -- life cycle: async with, astart, aclose --------------------------------------------------------


def test_async_with_starts_and_closes_the_pool_without_blocking_the_loop(tmp_path):
    """The workers become ready, and run cleanup(), only once a ticker on the loop has opened
    their gates: a start or a close that blocked the loop would never end."""
    start_gate, cleanup_gate, cleaned = (str(tmp_path / name) for name in ("start", "cleanup", "cleaned"))

    async def main() -> tuple[int, int]:
        ticks = 0
        closing_at: int | None = None

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 5:
                    open(start_gate, "w").close()
                if closing_at is not None and ticks == closing_at + 5:
                    open(cleanup_gate, "w").close()
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        adapter_args = {"gate": start_gate, "cleanup_gate": cleanup_gate, "cleaned": cleaned}
        async with Pool(GatedStart, size=2, adapter_args=adapter_args, shutdown_timeout=30) as pool:
            assert "running" in repr(pool)
            started_ticks = ticks
            assert await pool.aexecute("add", {"a": 1}) == 2
            closing_at = ticks
        closed_ticks = ticks - closing_at
        assert "closed" in repr(pool)
        task.cancel()
        return started_ticks, closed_ticks

    started_ticks, closed_ticks = run(main())
    assert started_ticks >= 5 and closed_ticks >= 5
    with open(cleaned) as f:
        assert len(f.read().split()) == 2  # both workers' cleanup() saw the gate: nobody was killed


def test_cancelling_astart_closes_the_pool(tmp_path):
    gate, marker = str(tmp_path / "never"), str(tmp_path / "initializing")

    async def main() -> None:
        pool = Pool(GatedStart, size=2, adapter_args={"gate": gate, "marker": marker}, start_timeout=60)
        starting = asyncio.create_task(pool.astart())
        await await_for(lambda: os.path.exists(marker))  # a worker is inside initialize()
        began = time.monotonic()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert time.monotonic() - began < 30  # not start_timeout: the workers starting are killed
        assert "closed" in repr(pool)
        with pytest.raises(SnakepitError) as info:
            await pool.aexecute("add", {"a": 1})
        assert info.value.reason == "pool_closed"
        await pool.aclose()  # closed already: nothing to do

    run(main())


def test_aclose_wait_drains_the_loops_calls_and_refuses_new_ones(tmp_path):
    gate, marker = str(tmp_path / "gate"), str(tmp_path / "running")

    async def main() -> None:
        async with Pool(Toolbox, size=1) as pool:
            running = asyncio.create_task(pool.aexecute("gate", {"path": gate, "marker": marker, "value": 7}))
            await await_for(lambda: os.path.exists(marker))
            queued = asyncio.create_task(pool.aexecute("add", {"a": 1}))
            await await_for(lambda: pool.stats()["waiting"] == 1)
            closing = asyncio.create_task(pool.aclose(wait=True))
            await await_for(lambda: "draining" in repr(pool))
            with pytest.raises(SnakepitError) as info:
                await pool.aexecute("add", {"a": 1})
            assert info.value.reason == "pool_closed"
            assert not closing.done()
            open(gate, "w").close()
            assert await running == 7 and await queued == 2
            await closing
            assert "closed" in repr(pool)

    run(main())


def test_cancelling_a_draining_aclose_cancels_the_calls_and_still_closes(tmp_path):
    gate, marker = str(tmp_path / "never"), str(tmp_path / "running")

    async def main() -> None:
        pool = await Pool(Toolbox, size=1).astart()
        running = asyncio.create_task(pool.aexecute("gate", {"path": gate, "marker": marker}))
        await await_for(lambda: os.path.exists(marker))
        closing = asyncio.create_task(pool.aclose(wait=True))
        await await_for(lambda: "draining" in repr(pool))
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert "closed" in repr(pool)
        with pytest.raises(SnakepitError) as info:
            await running
        assert info.value.reason == "pool_closed"

    run(main())


def test_a_task_cannot_drain_the_pool_from_inside_its_own_call():
    async def main() -> None:
        async with Pool(Toolbox, size=1) as pool:
            refused: list[SnakepitError] = []
            async for _ in pool.astream("count", {"n": 3}):
                with pytest.raises(SnakepitError) as info:
                    await pool.aclose(wait=True)
                refused.append(info.value)
                break

            async def callback(chunk: object) -> object:
                with pytest.raises(SnakepitError) as info:
                    await pool.aclose(wait=True)
                refused.append(info.value)
                return HALT

            assert (await pool.aexecute_stream("count", {"n": 3}, callback)).halted
            with pytest.raises(SnakepitError) as info:
                pool.close(wait=True)  # blocking, on the running loop
            refused.append(info.value)
            assert [error.reason for error in refused] == ["invalid_arguments"] * 3
            assert "aclose" in refused[-1].message
            assert "running" in repr(pool) and await pool.aexecute("add", {"a": 1}) == 2

    run(main())

"""pool.map and pool.amap against real workers."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
import tracemalloc
from decimal import Decimal

import msgspec
import pytest
from helpers import Faulty, Mode, Point, Toolbox, wait_for

from snakepit import Pool, SnakepitError


def test_results_in_input_order(pool):
    assert list(pool.map("add", [{"a": i, "b": 1} for i in range(1000)])) == [i + 1 for i in range(1000)]
    assert list(pool.map("add", [])) == []


def test_unordered_yields_every_result(pool):
    assert sorted(pool.map("add", ({"a": i} for i in range(1000)), ordered=False)) == [i + 1 for i in range(1000)]


def test_every_worker_is_kept_busy(pool):
    states = list(pool.map("state", [{} for _ in range(400)], chunksize=5))
    assert len({s["pid"] for s in states}) == 2


def test_a_failing_item_raises_at_its_position(pool):
    items = [{"a": 1}, {"a": 2}, {"a": "three"}, {"a": 4}]
    results = pool.map("add", items)
    assert next(results) == 2 and next(results) == 3
    with pytest.raises(SnakepitError) as info:
        next(results)
    assert info.value.reason == "invalid_arguments" and "parameter `a`" in info.value.message


def test_return_exceptions_yields_the_errors_in_place(pool):
    mixed = list(pool.map("echo", [{"value": i} for i in range(3)] + [{"bad": 1}], return_exceptions=True))
    assert mixed[:3] == [0, 1, 2] and isinstance(mixed[3], SnakepitError)
    failures = list(pool.map("fail", [{"message": str(i)} for i in range(3)], return_exceptions=True))
    assert [f.details["message"] for f in failures] == ["0", "1", "2"]
    assert all(f.reason == "tool_exception" and "ValueError" in f.traceback for f in failures)


def test_values_travel_exactly_both_ways(pool):
    values = [(1, 2), {3}, Point(1, 2), 2**100, None, b"raw"]
    assert list(pool.map("echo", [{"value": v} for v in values])) == values
    assert list(pool.map("pair", [{"p": [1, 2]}, {"p": (3, 4), "scale": 2}])) == [(1.0, 2.0), (6.0, 8.0)]


def test_a_call_and_a_map_item_receive_the_same_values(pool):
    """Arguments are sent as msgpack only when it carries them exactly, for execute and map
    alike; anything else (a str enum member, a Decimal, a big int, an object) travels pickled
    and is checked against the annotation as it is."""
    cases = [
        ("typed_kinds", {"text": Mode.FAST}),
        ("typed_kinds", {"text": "x", "number": Decimal("1.5")}),
        ("typed_kinds", {"text": "x", "number": 2}),
        ("add", {"a": 2**70, "b": 1}),
        ("pair", {"p": (1, 2)}),
        ("pair", {"p": [3, 4]}),
        ("echo", {"value": ("\ud800", {1: b"x"})}),
        ("echo", {"value": "\ud800"}),  # exact by type, but msgpack refuses a lone surrogate
    ]
    expected = [
        ["Mode", "float", 0.0],
        ["str", "float", 1.5],
        ["str", "float", 2.0],
        2**70 + 1,
        (1.0, 2.0),
        (3.0, 4.0),
        ("\ud800", {1: b"x"}),
        "\ud800",
    ]
    assert [pool.execute(tool, args) for tool, args in cases] == expected
    for (tool, args), value in zip(cases, expected):
        assert list(pool.map(tool, [args] * 3)) == [value] * 3
    for bad in ({"a": Point(1, 2)}, {"a": True}):
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", bad)
        assert info.value.reason == "invalid_arguments"
        assert [r.reason for r in pool.map("add", [bad] * 2, return_exceptions=True)] == ["invalid_arguments"] * 2


def test_what_msgpack_refuses_still_travels_in_streams(pool):
    assert list(pool.stream("stream_values", {"values": ["\ud800", 2**70, "ok"]})) == ["\ud800", 2**70, "ok"]


def test_raw_msgpack_in_arguments_cannot_break_a_worker(pool):
    restarts = pool.stats()["restarts"]
    for tool, args in (("echo", {"value": msgspec.Raw(b"\xc1")}), ("typed_kinds", {"text": msgspec.Raw(b"")})):
        try:
            pool.execute(tool, args)
        except SnakepitError as exc:
            assert exc.category == "validation"
        assert all(isinstance(r, (SnakepitError, msgspec.Raw)) for r in pool.map(tool, [args] * 2, return_exceptions=True))
    assert pool.stats()["restarts"] == restarts


def test_a_stop_iteration_escaping_a_tool_fails_only_its_item(pool):
    """In a batch's C-level iteration a StopIteration would look like the end of the items."""
    results = list(pool.map("first", [{"items": [1]}, {"items": []}, {"items": [3]}] * 50, chunksize=150, return_exceptions=True))
    assert [None if isinstance(r, SnakepitError) else r for r in results] == [1, None, 3] * 50
    failed = results[1::3]
    assert all(f.reason == "tool_exception" and "StopIteration" in f.message for f in failed)


def test_failures_anywhere_in_one_batch_keep_their_positions(pool):
    """One batch, failures scattered through it: invalid arguments and exceptions the tool
    raises (``sleep`` refuses a negative length); every other item still runs."""
    items = [{"a": "x"} if i % 7 == 3 else {"a": i} for i in range(500)]
    results = list(pool.map("add", items, chunksize=500, return_exceptions=True))
    assert [isinstance(r, SnakepitError) for r in results] == [i % 7 == 3 for i in range(500)]
    assert [r for r in results if not isinstance(r, SnakepitError)] == [i + 1 for i in range(500) if i % 7 != 3]
    sleeps = [{"seconds": -1 if i % 5 == 0 else 0} for i in range(100)]
    results = list(pool.map("sleep", sleeps, chunksize=100, return_exceptions=True))
    assert [getattr(r, "reason", None) for r in results] == ["tool_exception" if i % 5 == 0 else None for i in range(100)]


def test_an_unserializable_result_fails_only_its_item(pool):
    results = list(pool.map("unserializable_result", [{}, {}], return_exceptions=True))
    assert all(r.reason == "serialization_error" for r in results)


def test_streaming_tools_map_to_their_chunk_lists(pool):
    assert list(pool.map("count", [{"n": 1}, {"n": 2}])) == [
        [{"number": 0, "is_last": True}],
        [{"number": 0, "is_last": False}, {"number": 1, "is_last": True}],
    ]


def test_an_unbounded_input_is_read_lazily_in_bounded_memory(pool):
    consumed = itertools.count()

    def endless():
        for i in consumed:
            yield {"a": i}

    tracemalloc.start()
    try:
        results = pool.map("add", endless())
        for expected, got in zip(range(1, 200_001), results):
            assert got == expected
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    results.close()
    read_ahead = next(consumed) - 200_000
    assert read_ahead < 40_000  # bounded look-ahead, not the whole input
    assert peak < 50 << 20


def test_large_batches_do_not_stall_when_the_look_ahead_is_full(pool):
    """Regression: with the look-ahead full, yielding must be followed by refilling."""
    total = sum(pool.map("add", ({"a": i} for i in range(100_000)), chunksize=8192))
    assert total == sum(range(1, 100_001))


def test_map_items_with_numpy_scalars_are_converted(pool):
    np = pytest.importorskip("numpy")
    assert list(pool.map("add", [{"a": np.int64(i), "b": np.int32(1)} for i in range(300)])) == list(range(1, 301))
    items = [{"row": [np.float64(0.5)]}, {"row": np.ones(2)}, {"row": [1.0], "flags": [np.bool_(True)]}, {"row": ["x"]}]
    first, array, third, wrong = pool.map("typed_containers", items, return_exceptions=True)
    assert first == [["float", 0.5], ["str", ""]] and third == [["float", 1.0], ["bool", True], ["str", ""]]
    assert array.reason == "invalid_arguments" and "numpy.ndarray" in array.message and "`.tolist()`" in array.message
    assert wrong.message == "invalid arguments for 'typed_containers': parameter `row[0]`: Expected `float`, got `str`"


def test_progress_callable_and_bar(pool, capsys):
    updates = []
    list(pool.map("add", [{"a": i} for i in range(500)], progress=lambda done, total: updates.append((done, total))))
    assert updates[-1] == (500, 500) and all(total == 500 for _, total in updates)
    list(pool.map("add", [{"a": i} for i in range(50)], progress=True))
    drawn = [line.strip() for line in capsys.readouterr().err.replace("\n", "\r").split("\r") if line.strip()]
    assert drawn[0].startswith("add:") and "0/50" in drawn[0] and "50/50" in drawn[-1], drawn
    list(pool.map("add", ({"a": i} for i in range(50)), progress=True))  # no length: a counter
    drawn = [line.strip() for line in capsys.readouterr().err.replace("\n", "\r").split("\r") if line.strip()]
    assert drawn[0].startswith("add: 0item") and drawn[-1].startswith("add: 50item"), drawn


def test_map_with_a_session_stays_on_its_worker(pool):
    pid = pool.execute("state", session_id="mapper")["pid"]
    assert {s["pid"] for s in pool.map("state", [{} for _ in range(50)], session_id="mapper")} == {pid}


def test_a_worker_dying_mid_map_fails_only_its_items():
    with Pool(Faulty, size=2) as pool:
        victim = pool.stats()["worker_info"][0]["pid"]
        killer = threading.Timer(0.3, os.kill, args=(victim, signal.SIGKILL))
        killer.start()
        results = list(pool.map("sleep", [{"seconds": 0.01} for _ in range(200)], return_exceptions=True, chunksize=5))
        killer.join()
        crashed = [r for r in results if isinstance(r, SnakepitError)]
        assert crashed and all(r.reason == "worker_crashed" for r in crashed)
        assert sum(1 for r in results if r == 0.01) == 200 - len(crashed)
        assert len(crashed) <= 10  # at most the two batches the dead worker held
        assert pool.execute("pid") > 0


def test_leaving_a_map_early_gives_the_workers_back():
    with Pool(Faulty, size=2, cancel_grace=2) as pool:
        results = pool.map("sleep", [{"seconds": 0.05} for _ in range(1000)], chunksize=2)
        next(results)
        results.close()
        assert pool.execute("pid") > 0
        assert pool.stats()["restarts"] == 0


def test_cancelling_stops_a_batch_before_its_next_item():
    """A batch of 100 slow items is cancelled after the item running: the worker is back at once
    (not after the other 99), and it is reused, not killed."""
    with Pool(Faulty, size=1, cancel_grace=5) as pool:
        items = itertools.chain([{"seconds": 0}] * 100, itertools.repeat({"seconds": 0.05}, 1000))
        results = pool.map("sleep", items, chunksize=100)
        next(results)  # the first batch is back; the second, slow one is running
        started = time.monotonic()
        results.close()
        assert pool.execute("pid") > 0
        assert time.monotonic() - started < 2.0  # the rest of the batch would take ~5 s
        assert pool.stats()["restarts"] == 0


@pytest.mark.parametrize("payload", [400_000, 700_000], ids=["batches-fit-the-pipe", "batches-overflow-the-pipe"])
def test_stuck_batches_time_out(payload):
    """Every batch of a stuck tool fails with ``timeout``, the workers are replaced, the map ends.

    With 1.4 MB batches, a second batch queued behind a running one would block the map in
    ``write`` until the worker read it (a stuck tool never does), so no timeout could fire."""
    with Pool(Faulty, size=1, cancel_grace=0.2, kill_grace=0.2) as pool:
        items = [{"payload": b"x" * payload, "seconds": 30}] * 6
        started = time.monotonic()
        results = list(pool.map("hold", items, chunksize=2, timeout=0.5, return_exceptions=True))
        assert time.monotonic() - started < 10
        assert [r.reason for r in results] == ["timeout"] * 6
        assert pool.execute("pid") > 0


def test_amap_times_out_stuck_batches_too():
    with Pool(Faulty, size=1, cancel_grace=0.2, kill_grace=0.2) as pool:

        async def main():
            items = [{"payload": b"", "seconds": 30}] * 4
            return [r async for r in pool.amap("hold", items, chunksize=1, timeout=0.5, return_exceptions=True)]

        assert [r.reason for r in asyncio.run(main())] == ["timeout"] * 4


def test_a_held_batch_goes_out_even_with_the_look_ahead_full(pool):
    """Regression: batches too big to queue are held; held items count against the look-ahead,
    so with it full the held batch was never offered to a worker and the map waited forever."""
    items = [{"value": "x" * 60} for _ in range(40_000)]
    assert sum(1 for _ in pool.map("echo", items, chunksize=20_000)) == 40_000


def test_a_held_batch_is_not_mistaken_for_a_cancelled_one():
    """Regression: a held batch kept the call id drawn when it was read. Sent later to a worker
    that had meanwhile been told to cancel a newer call, the worker skipped it as cancelled."""
    with Pool(Faulty, size=2) as pool:
        other = pool.stream("guarded", {"delay": 0.01}, session_id="other")
        next(other)  # "other" holds one worker; the map gets the second
        results: list = []
        items = [{"payload": b"", "seconds": 30}, {"payload": b"x" * (2 << 20), "seconds": 0}]
        mapper = threading.Thread(target=lambda: results.extend(pool.map("hold", items, chunksize=1, return_exceptions=True)))
        mapper.start()
        # The first batch runs; the second, too big to queue behind it, is held by the map.
        busy = wait_for(lambda: [w for w in pool.stats()["worker_info"] if w["current_tool"] == "hold"])
        other.close()
        wait_for(lambda: pool.stats()["available"] == 1)
        newer = pool.stream("guarded", {"delay": 0.01}, session_id="other")  # a newer call id
        next(newer)
        newer.close()  # that worker now treats every id up to this call's as cancelled
        wait_for(lambda: pool.stats()["available"] == 1)
        os.kill(busy[0]["pid"], signal.SIGKILL)  # the map takes the other worker for its held batch
        mapper.join(timeout=30)
        assert results[0].reason == "worker_crashed"
        assert results[1] == 2 << 20


def test_a_worker_found_dead_while_sending_fails_only_its_items():
    """Regression: a worker that died idle between batches was noticed by the write of the next
    batch; the map then tried to send another to it and raised KeyError."""

    def slow_input():  # the pace of a slow source, so the death is found by the next write
        yield {"signum": 0}
        yield {"signum": signal.SIGKILL}
        for _ in range(3):
            time.sleep(0.2)
            yield {"signum": 0}

    with Pool(Toolbox, size=1) as pool:
        results = list(pool.map("kill_self", slow_input(), chunksize=1, return_exceptions=True))
        assert results[0] is None and results[1].reason == "worker_crashed"
        assert len(results) == 5
        assert pool.execute("state")["pid"] > 0


def test_a_queued_batch_gets_its_whole_timeout():
    """A batch's timeout counts from when it starts running, not from when it was queued."""
    with Pool(Faulty, size=1) as pool:
        # The second batch is queued at once and starts after 0.6 s: it would have 0.4 s left.
        results = list(pool.map("sleep", [{"seconds": 0.6}] * 3, chunksize=1, timeout=1.0, return_exceptions=True))
        assert results == [0.6] * 3


def test_map_counts_requests_and_errors():
    with Pool(Toolbox, size=1) as pool:
        list(pool.map("add", [{"a": 1}, {"a": "x"}, {"a": 2}], return_exceptions=True))
        stats = pool.stats()
        assert stats["requests"] == 3 and stats["errors"] == 1


def test_bad_map_arguments(pool):
    with pytest.raises(SnakepitError) as info:
        pool.map("nope", [{}])
    assert info.value.reason == "tool_not_found"
    with pytest.raises(SnakepitError):
        pool.map("add", [{}], chunksize=0)
    with pytest.raises(SnakepitError) as info:
        list(pool.map("add", [1, 2]))
    assert info.value.reason == "invalid_arguments"


def test_amap(pool):
    async def main():
        ordered = [r async for r in pool.amap("add", ({"a": i} for i in range(500)))]
        unordered = [r async for r in pool.amap("add", [{"a": i} for i in range(500)], ordered=False)]
        errors = [r async for r in pool.amap("add", [{"a": "x"}], return_exceptions=True)]
        return ordered, unordered, errors

    ordered, unordered, errors = asyncio.run(main())
    assert ordered == [i + 1 for i in range(500)] and sorted(unordered) == ordered
    assert errors[0].reason == "invalid_arguments"


def test_amap_writes_a_batch_too_big_for_the_pipe_off_the_event_loop():
    """A stopped worker reads nothing: a batch bigger than its pipe cannot be written until it
    runs again. amap writes it from a thread, so the loop goes on serving everything else."""
    payload = b"x" * (4 << 20)  # four times the pipe's capacity

    async def scenario(pool: Pool, worker: int) -> tuple[list[int], float]:
        gaps: list[float] = []
        mapping = asyncio.ensure_future(_collect(pool.amap("hold", [{"payload": payload, "seconds": 0}], timeout=30)))
        last = time.monotonic()
        for _ in range(50):  # half a second of ticks while the worker is stopped
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        os.kill(worker, signal.SIGCONT)
        return await asyncio.wait_for(mapping, 30), max(gaps)

    with Pool(Faulty, size=1, heartbeat_timeout=None) as pool:
        worker = pool.stats()["worker_info"][0]["pid"]
        os.kill(worker, signal.SIGSTOP)
        try:
            results, longest_gap = asyncio.run(scenario(pool, worker))
        finally:
            os.kill(worker, signal.SIGCONT)
        assert results == [len(payload)]
        assert longest_gap < 2.0  # blocked on the write, the loop would not tick until SIGCONT
        assert pool.execute("pid") == worker and pool.stats()["restarts"] == 0


async def _collect(items) -> list:
    return [item async for item in items]


def test_an_item_whose_worker_died_is_handed_out_before_the_map_asks_for_another_worker():
    # The session's worker dies under the map's last item: its strict mode would refuse any other
    # worker, and nothing is left to run. The item's own error is the answer, not that refusal.
    with Pool(Toolbox, size=1, affinity="strict_queue") as pool:
        pool.execute("add", {"a": 1}, session_id="s")
        [crashed] = pool.map("crash", [{"code": 7}], session_id="s", return_exceptions=True)
        assert isinstance(crashed, SnakepitError) and crashed.reason == "worker_crashed"

        async def amap() -> list:
            wait_for(lambda: pool.stats()["available"] == 1)
            pool.execute("add", {"a": 1}, session_id="t")
            return [item async for item in pool.amap("crash", [{"code": 7}], session_id="t", return_exceptions=True)]

        [crashed] = asyncio.run(amap())
        assert isinstance(crashed, SnakepitError) and crashed.reason == "worker_crashed"

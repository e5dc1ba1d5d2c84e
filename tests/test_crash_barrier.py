"""The crash barrier: a call of an idempotent tool whose worker dies under it runs again on a
healthy worker (``max_retries``); everything else fails with ``worker_crashed`` as before."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import Toolbox, wait_for

from snakepit import Pool, SnakepitError

FAST = dict(cancel_grace=0.3, kill_grace=0.3, shutdown_timeout=2.0, quarantine_after=None)


def _crashed(fn, *args, **kwargs) -> SnakepitError:
    with pytest.raises(SnakepitError) as caught:
        fn(*args, **kwargs)
    assert (caught.value.category, caught.value.reason) == ("worker", "worker_crashed")
    return caught.value


def test_an_idempotent_call_whose_worker_dies_is_answered_by_another(tmp_path):
    events: list[dict] = []
    with Pool(Toolbox, size=2, on_event=events.append, **FAST) as pool:
        first = {w["pid"] for w in pool.stats()["worker_info"]}
        result = pool.execute("crash_first", {"marker": str(tmp_path / "m"), "value": 5})
        assert result["value"] == 5
        wait_for(lambda: pool.stats()["deaths_by_cause"] == {"exit": 1})  # counted by the supervisor
        stats = pool.stats()
        assert (stats["retries"], stats["errors"]) == (1, 0)
        [retry] = [e for e in events if e["event"] == "call_retry"]
        assert (retry["tool"], retry["attempt"], retry["cause"]) == ("crash_first", 1, "exit")
        assert result["pid"] in first or result["pid"] in {w["pid"] for w in stats["worker_info"]}


def test_retries_stop_at_max_retries_and_the_caller_gets_the_crash():
    with Pool(Toolbox, size=2, max_retries=2, **FAST) as pool:
        error = _crashed(pool.execute, "crash_always")
        assert error.details["cause"] == "killed"
        wait_for(lambda: pool.stats()["deaths_by_cause"] == {"killed": 3})  # counted by the supervisor
        assert (pool.stats()["retries"], pool.stats()["errors"]) == (2, 1)


def test_no_retry_without_idempotent_or_with_max_retries_zero(tmp_path):
    with Pool(Toolbox, size=2, **FAST) as pool:
        _crashed(pool.execute, "crash", {"code": 3})
        assert pool.stats()["retries"] == 0
    with Pool(Toolbox, size=2, max_retries=0, **FAST) as pool:
        _crashed(pool.execute, "crash_first", {"marker": str(tmp_path / "m")})
        assert pool.stats()["retries"] == 0


def test_retries_end_with_the_calls_deadline():
    with Pool(Toolbox, size=2, max_retries=50, **FAST) as pool:
        started = time.monotonic()
        _crashed(pool.execute, "crash_always", timeout=1.0)
        assert time.monotonic() - started < 1.0 + 2.0
        assert 1 <= pool.stats()["retries"] < 10  # backing off: 50, 100, 200, 400 ms...


def test_a_stream_runs_again_only_if_nothing_reached_the_caller(tmp_path):
    with Pool(Toolbox, size=2, **FAST) as pool:
        assert list(pool.stream("stream_crash_first", {"marker": str(tmp_path / "a"), "n": 4})) == [0, 1, 2, 3]
        got: list[int] = []
        result = pool.execute_stream("stream_crash_first", {"marker": str(tmp_path / "b"), "n": 2}, got.append)
        assert got == [0, 1] and result.chunks == 2
        assert pool.stats()["retries"] == 2
        received: list[int] = []
        with pytest.raises(SnakepitError) as caught:
            for chunk in pool.stream("stream_then_die", {"n": 2}):
                received.append(chunk)
        assert caught.value.reason == "worker_crashed" and received == [0, 1]
        assert pool.stats()["retries"] == 2


def test_asyncio_calls_and_streams_run_again_too(tmp_path):
    async def main(pool: Pool) -> tuple:
        value = await pool.aexecute("crash_first", {"marker": str(tmp_path / "a"), "value": 3})
        chunks = [c async for c in pool.astream("stream_crash_first", {"marker": str(tmp_path / "b"), "n": 3})]
        got: list[int] = []
        await pool.aexecute_stream("stream_crash_first", {"marker": str(tmp_path / "c"), "n": 2}, got.append)
        return value["value"], chunks, got

    with Pool(Toolbox, size=2, **FAST) as pool:
        assert asyncio.run(main(pool)) == (3, [0, 1, 2], [0, 1])
        assert pool.stats()["retries"] == 3


def test_a_strict_session_call_is_not_run_again_a_hint_session_call_is(tmp_path):
    with Pool(Toolbox, size=2, **FAST) as pool:
        _crashed(pool.execute, "crash_first", {"marker": str(tmp_path / "strict")}, session_id="s", affinity="strict_queue")
        assert pool.stats()["retries"] == 0
        result = pool.execute("crash_first", {"marker": str(tmp_path / "hint")}, session_id="h", affinity="hint")
        assert pool.stats()["retries"] == 1
        assert pool.execute("state", session_id="h", affinity="hint")["pid"] == result["pid"]  # pinned afresh


def test_map_items_of_a_lost_worker_run_again_one_by_one_and_a_poison_item_fails_alone(tmp_path):
    with Pool(Toolbox, size=2, max_retries=1, **FAST) as pool:
        items = [{"x": x, "marker": str(tmp_path / "m")} for x in range(20)]
        assert list(pool.map("square_or_die", items, chunksize=4)) == [x * x for x in range(20)]
        assert pool.stats()["retries"] >= 1
        results = list(pool.map("square_or_die", [{"x": x, "poison": 7} for x in range(12)], chunksize=3, return_exceptions=True))
        assert [r for i, r in enumerate(results) if i != 7] == [x * x for x in range(12) if x != 7]
        assert isinstance(results[7], SnakepitError) and results[7].reason == "worker_crashed"


def test_an_async_map_runs_items_again_too(tmp_path):
    async def main(pool: Pool) -> list:
        return [
            r async for r in pool.amap("square_or_die", [{"x": x, "marker": str(tmp_path / "m")} for x in range(8)], chunksize=2)
        ]

    with Pool(Toolbox, size=2, **FAST) as pool:
        assert asyncio.run(main(pool)) == [x * x for x in range(8)]


def test_max_retries_is_checked():
    for value in (-1, 1.5, True, None):
        with pytest.raises(SnakepitError) as caught:
            Pool(Toolbox, size=1, max_retries=value)
        assert caught.value.reason == "invalid_config"

"""pool.submit: calls as concurrent.futures.Future objects."""

from __future__ import annotations

import concurrent.futures
import os
import threading

import pytest
from helpers import Toolbox, wait_for

from snakepit import Pool, SnakepitError, ToolError


@pytest.fixture(scope="module")
def pool():
    with Pool(Toolbox, size=2, start_timeout=30) as pool:
        yield pool


def test_a_future_gives_what_execute_gives(pool):
    futures = [pool.submit("add", a=i, b=10) for i in range(20)]
    assert [future.result(timeout=30) for future in futures] == [i + 10 for i in range(20)]
    assert pool.submit("add", {"a": 1}).result(timeout=30) == 2
    done = list(concurrent.futures.as_completed([pool.submit("add", a=i) for i in range(5)], timeout=30))
    assert sorted(future.result() for future in done) == [1, 2, 3, 4, 5]
    stream = pool.submit("count", n=3).result(timeout=30)  # a streaming tool: the list of its chunks
    assert [chunk["number"] for chunk in stream] == [0, 1, 2]


def test_its_exception_is_the_calls_error(pool):
    failed = pool.submit("fail", message="nope")
    error = failed.exception(timeout=30)
    assert isinstance(error, ToolError) and isinstance(error, ValueError)
    with pytest.raises(ValueError, match="nope"):
        failed.result()
    refused = pool.submit("no_such_tool").exception(timeout=30)
    assert isinstance(refused, SnakepitError) and refused.reason == "tool_not_found"


def test_results_and_callbacks_come_on_a_thread_of_the_pools(tmp_path):
    with Pool(Toolbox, size=1) as pool:
        seen: list[str] = []
        called = threading.Event()
        gate = tmp_path / "gate"
        future = pool.submit("gate", path=str(gate), value=2)  # not done before its callback is added
        future.add_done_callback(lambda f: (seen.append(threading.current_thread().name), called.set()))
        gate.touch()
        assert future.result(timeout=30) == 2 and called.wait(30)
        assert seen[0].startswith("snakepit-futures") and seen[0] != threading.current_thread().name


def test_cancel_withdraws_a_waiting_call_and_refuses_a_running_one(tmp_path):
    with Pool(Toolbox, size=1) as pool:
        marker = tmp_path / "running"
        running = pool.submit("sleep", seconds=30, marker=str(marker))
        wait_for(lambda: marker.exists() and running.running(), timeout=30)
        waiting_marker = tmp_path / "waiting-ran"
        waiting = pool.submit("sleep", seconds=0, marker=str(waiting_marker))
        wait_for(lambda: pool.stats()["waiting"] == 1, timeout=30)
        assert waiting.cancel() and waiting.cancelled()
        assert concurrent.futures.wait([waiting], timeout=30).done == {waiting}  # waiters are told
        wait_for(lambda: pool.stats()["waiting"] == 0, timeout=30)  # withdrawn from the queue
        assert not running.cancel()  # concurrent.futures' contract: a running call is not cancelled so
        assert pool.cancel(running)  # ...but the pool cancels it, in its worker
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(timeout=30)
        assert pool.execute("add", a=1) == 2  # the worker lives on (or was replaced)
        assert not waiting_marker.exists()
        assert not pool.cancel(running)  # done already


def test_a_future_of_another_pool_is_refused(pool):
    with pytest.raises(SnakepitError) as info:
        pool.cancel(concurrent.futures.Future())
    assert info.value.reason == "invalid_arguments"


def test_closing_the_pool_fails_the_futures_it_had_not_finished(tmp_path):
    pool = Pool(Toolbox, size=1).start()
    marker = tmp_path / "running"
    running = pool.submit("sleep", seconds=30, marker=str(marker))
    wait_for(marker.exists, timeout=30)
    queued = pool.submit("add", a=1)
    pool.close()
    for future in (running, queued):
        error = future.exception(timeout=30)
        assert isinstance(error, SnakepitError) and error.reason == "pool_closed"
    with pytest.raises(SnakepitError) as info:
        pool.submit("add", a=1)
    assert info.value.reason == "pool_closed"
    assert not any(
        t.name.startswith("snakepit-futures") and t.is_alive() for t in threading.enumerate() if str(id(pool)) in t.name
    )


def test_a_callback_may_close_the_pool_without_a_deadlock():
    pool = Pool(Toolbox, size=1).start()
    closed = threading.Event()

    def close(_: concurrent.futures.Future) -> None:
        pool.close()
        closed.set()

    pool.submit("add", a=1).add_done_callback(close)
    assert closed.wait(30)
    assert os.getpid()  # and this process is still fine

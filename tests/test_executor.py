"""snakepit.Executor: a concurrent.futures.Executor over a pool's workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
from concurrent.futures.process import BrokenProcessPool

import executor_functions as fns
import pytest
from helpers import wait_for

import snakepit
from snakepit import Executor, SnakepitError


@pytest.fixture(scope="module")
def executor():
    with Executor(2) as executor:
        executor.submit(fns.square, 1).result(timeout=60)  # started (in the background) before the tests count processes
        yield executor


def test_it_is_an_executor(executor):
    assert isinstance(executor, concurrent.futures.Executor)
    assert executor.submit(fns.square, 7).result(timeout=30) == 49
    assert executor.submit(fns.add, 1, 2, c=3).result(timeout=30) == 6
    assert list(executor.map(fns.square, range(10))) == [x * x for x in range(10)]
    assert list(executor.map(fns.add, range(5), range(5), chunksize=2)) == [2 * x for x in range(5)]
    futures = [executor.submit(fns.square, x) for x in range(8)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=30)) == sorted(x * x for x in range(8))


def test_lambdas_and_closures_travel_by_value(executor):
    offset = 5
    assert executor.submit(lambda x: x + offset, 1).result(timeout=30) == 6
    assert list(executor.map(lambda x: -x, [1, 2, 3], chunksize=2)) == [-1, -2, -3]


def test_it_works_with_run_in_executor(executor):
    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(executor, fns.square, 9)

    assert asyncio.run(main()) == 81


def test_the_functions_own_exception_is_raised_with_the_workers_traceback(executor):
    future = executor.submit(fns.missing, "/no/such/file")
    error = future.exception(timeout=30)
    assert type(error) is FileNotFoundError and error.errno == errno.ENOENT  # the original object
    assert isinstance(error.__cause__, snakepit.RemoteTraceback) and "open(path)" in str(error.__cause__)
    with pytest.raises(ZeroDivisionError):
        executor.submit(lambda: 1 / 0).result(timeout=30)
    unloadable = executor.submit(fns.raise_unloadable).exception(timeout=30)
    assert isinstance(unloadable, snakepit.ToolError)  # it will not unpickle: the ToolError, typed
    assert isinstance(unloadable, fns.Unloadable)


def test_a_crash_fails_its_future_only():
    with Executor(1) as executor:
        error = executor.submit(fns.crash).exception(timeout=30)
        assert isinstance(error, snakepit.WorkerError) and error.reason == "worker_crashed"
        assert not isinstance(error, BrokenProcessPool)
        assert executor.submit(fns.square, 3).result(timeout=30) == 9  # never broken


def test_map_timeout_is_a_deadline_on_the_whole_iteration(tmp_path):
    with Executor(1) as executor:
        results = executor.map(fns.sleep, [0, 30, 0], timeout=0.5)
        assert next(results) == 0
        with pytest.raises(TimeoutError):
            next(results)


def test_the_per_call_timeout_cancels_a_call_in_its_worker():
    with Executor(1, timeout=0.3) as executor:
        error = executor.submit(fns.sleep, 30).exception(timeout=30)
        assert isinstance(error, snakepit.TimeoutError) and error.reason == "timeout"
        assert "'sleep'" in str(error) and "snakepit.call" not in str(error)  # named by its function
        with pytest.raises(snakepit.TimeoutError, match="'sleep'"):
            list(executor.map(fns.sleep, [30]))
        assert executor.submit(fns.square, 2).result(timeout=30) == 4


def test_the_initializer_runs_in_every_worker_replacements_included():
    with Executor(1, initializer=fns.init, initargs=("ready",)) as executor:
        assert executor.submit(fns.initialized).result(timeout=30) == ["ready"]
        executor.submit(fns.crash).exception(timeout=30)
        assert executor.submit(fns.initialized).result(timeout=30) == ["ready"]


def test_an_initializer_that_raises_fails_the_waiting_futures():
    with Executor(1, initializer=fns.init_fails, quarantine_after=None) as executor:
        error = executor.submit(fns.square, 2).exception(timeout=60)
        assert isinstance(error, SnakepitError) and error.reason == "worker_start_failed"
        later = executor.submit(fns.square, 3).exception(timeout=60)
        assert isinstance(later, SnakepitError) and later.reason == "worker_start_failed"


def test_max_tasks_per_child_replaces_workers():
    with Executor(1, max_tasks_per_child=2) as executor:
        pids = [executor.submit(fns.pid).result(timeout=30) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_shutdown_waits_for_the_calls_and_then_refuses_new_ones(tmp_path):
    executor = Executor(1)
    futures = [executor.submit(fns.sleep, 0.05) for _ in range(4)]
    executor.shutdown(wait=True)
    assert all(f.done() and f.result() == 0.05 for f in futures)
    with pytest.raises(RuntimeError):
        executor.submit(fns.square, 1)


def test_shutdown_cancel_futures_cancels_the_waiting_ones(tmp_path):
    executor = Executor(1)
    marker = tmp_path / "running"
    running = executor.submit(fns.sleep, 0.5, str(marker))
    wait_for(marker.exists, timeout=30)
    waiting = [executor.submit(fns.square, x) for x in range(20)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert running.result() == 0.5
    assert all(f.cancelled() or f.done() for f in waiting) and any(f.cancelled() for f in waiting)


def test_shutdown_without_waiting_returns_at_once_and_still_finishes(tmp_path):
    executor = Executor(1)
    future = executor.submit(fns.sleep, 0.3)
    executor.shutdown(wait=False)
    assert not future.done()
    assert future.result(timeout=30) == 0.3


def test_a_waiting_future_can_be_cancelled(tmp_path):
    with Executor(1) as executor:
        marker = tmp_path / "running"
        running = executor.submit(fns.sleep, 0.5, str(marker))
        wait_for(marker.exists, timeout=30)
        waiting = executor.submit(fns.square, 3)
        assert waiting.cancel() and not running.cancel()
        assert running.result(timeout=30) == 0.5


def test_options_it_owns_are_refused():
    with pytest.raises(SnakepitError) as info:
        Executor(1, size=2)
    assert info.value.reason == "invalid_config"
    with pytest.raises(ValueError):
        Executor(0)


def test_its_adapter_is_never_served():
    pytest.importorskip("grpc")
    from snakepit.grpc import Client

    with Executor(1) as executor:
        assert executor.submit(fns.square, 2).result(timeout=30) == 4
        server = executor._pool.serve("127.0.0.1:0")
        try:
            with Client(server.address) as client:
                assert client.tools() == []
                with pytest.raises(SnakepitError) as info:
                    client.execute("snakepit.call", fn=b"x", key=0, args=[], kwargs={})
                assert info.value.reason == "tool_not_found"
        finally:
            server.stop(grace=0)
    assert os.getpid()


def test_map_raises_a_calls_exception_at_its_position(executor):
    results = executor.map(lambda x: 10 // x, [5, 2, 0, 1])
    assert next(results) == 2 and next(results) == 5
    with pytest.raises(ZeroDivisionError) as info:
        next(results)
    assert isinstance(info.value.__cause__, snakepit.RemoteTraceback)


def test_leaving_a_map_early_cancels_its_calls():
    with Executor(1) as executor:
        results = executor.map(fns.sleep, [0, 30, 30, 30])
        assert next(results) == 0
        results.close()  # the rest is cancelled in its worker
        assert executor.submit(fns.square, 5).result(timeout=20) == 25


_SEEN = None  # set in each worker by the initializer of test_the_initializer_sets_globals_its_functions_see


def test_the_initializer_sets_globals_its_functions_see():
    def init(value: int) -> None:  # a local function: it travels by value, with its own copy of globals
        global _SEEN
        _SEEN = value

    def read(_: object = None) -> object:
        return _SEEN

    with Executor(1, initializer=init, initargs=(42,)) as executor:
        assert executor.submit(read).result(timeout=30) == 42  # one namespace per module in a worker
        assert list(executor.map(read, [1, 2])) == [42, 42]


def test_an_exception_whose_module_only_the_worker_imported_keeps_its_type(executor):
    import sys

    assert "executor_only_errors" not in sys.modules
    error = executor.submit(fns.raise_unimported).exception(timeout=30)
    assert type(error).__name__ == "RaisedInWorkers" and isinstance(error, ValueError)  # unpickled, as concurrent.futures does


def test_a_failed_start_fails_map_at_once_and_shutdown_returns():
    executor = Executor(1, initializer=fns.init_fails, quarantine_after=None)
    with pytest.raises(SnakepitError) as info:
        list(executor.map(fns.square, [1, 2]))
    assert info.value.reason == "worker_start_failed"
    assert executor.submit(fns.square, 1).exception(timeout=30).reason == "worker_start_failed"
    executor.shutdown(wait=True)


def test_shutdown_cancel_futures_cancels_a_maps_calls(tmp_path):
    executor = Executor(1)
    results = executor.map(fns.sleep, [0.2] * 50)
    assert next(results) == 0.2
    executor.shutdown(wait=True, cancel_futures=True)  # not the 10 s the map would take
    with pytest.raises(concurrent.futures.CancelledError):
        list(results)


def test_a_map_stopped_early_logs_nothing_alarming(caplog):
    with Executor(1, max_tasks_per_child=100) as executor, pytest.raises(ZeroDivisionError):
        list(executor.map(lambda x: 1 // x, range(20)))
    assert not [r for r in caplog.records if r.levelname == "CRITICAL"]


def test_the_program_waits_for_submitted_calls_at_exit(tmp_path):
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        from snakepit import Executor
        def work(path):
            import time
            time.sleep(0.2)
            open(path, "a").write("done\\n")
        if __name__ == "__main__":
            executor = Executor(1)
            for _ in range(2):
                executor.submit(work, {str(out)!r})
            executor.shutdown(wait=False)  # and the program ends: concurrent.futures runs them first
        """
    )
    (tmp_path / "script.py").write_text(script)
    done = subprocess.run([sys.executable, str(tmp_path / "script.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "done\n" * 2


def test_a_fork_of_the_owner_exits_without_waiting_for_the_executors_calls():
    """multiprocessing's fork copies the owner, the Executor's exit hook included: a forked
    child must not wait for calls that are not its own (ProcessPoolExecutor's shutdown would hang)."""
    import multiprocessing

    with Executor(1) as executor:
        executor.submit(fns.square, 2).result(timeout=30)
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as forked:
            assert forked.submit(abs, -3).result(timeout=30) == 3

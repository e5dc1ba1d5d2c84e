"""Supervision under fault injection, against real processes: nothing hangs, nothing leaks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from helpers import Faulty, await_for, gone, wait_for

from snakepit import HALT, Pool, SnakepitError

FAST = dict(cancel_grace=0.3, kill_grace=0.3, shutdown_timeout=2.0)


def pids(pool: Pool) -> set[int]:
    return {w["pid"] for w in pool.stats()["worker_info"]}


# -- deaths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_a_tool_raising_systemexit_or_keyboardinterrupt_fails_only_its_call(kind):
    """Not a crash, and not a worker killed by SIGINT: the tool raised, the worker lives on."""
    with Pool(Faulty, size=1) as pool:
        worker = pool.execute("pid")
        with pytest.raises(SnakepitError) as info:
            pool.execute("raise_base", {"kind": kind})
        assert (info.value.category, info.value.reason) == ("python_error", "tool_exception")
        assert info.value.details["type"] == kind and f"raise {kind}" in info.value.traceback
        assert pool.execute("pid") == worker and pool.stats()["restarts"] == 0


def test_a_failing_restart_backs_off_and_the_pool_keeps_serving(tmp_path):
    """Replacements that cannot start are retried with growing delays; survivors serve meanwhile."""
    marker = tmp_path / "broken"
    with Pool("helpers:BreaksOnRestart", size=2, adapter_args={"marker": str(marker)}, **FAST) as pool:
        marker.write_text("broken from now on")
        victim = sorted(pids(pool))[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pool.stats()["workers"] == 1)
        started = time.monotonic()
        for _ in range(20):  # the survivor serves every call
            pool.execute("pid")
        wait_for(lambda: pool.stats()["restarts"] >= 5, timeout=10)
        elapsed = time.monotonic() - started
        assert pool.stats()["workers"] == 1
        # 5 attempts with back-off 0, 0.1, 0.2, 0.4 s ... take measurably longer than immediate retries.
        assert elapsed > 0.5
        marker.unlink()
        wait_for(lambda: pool.stats()["workers"] == 2, timeout=15)


def test_workers_killed_for_timeouts_are_replaced_without_back_off():
    """Back-off is for crash loops; a worker the supervisor killed (it would not give up a
    timed-out call or batch) says nothing about its replacement, and the next must not wait."""
    events = []
    with Pool(Faulty, size=1, on_event=events.append, **FAST) as pool:
        for _ in range(2):
            wait_for(lambda: pool.stats()["available"] == 1)  # each time on a fresh worker
            with pytest.raises(SnakepitError) as info:
                pool.execute("c_sleep", {}, timeout=0.2)
            assert info.value.reason == "timeout"
        for _ in range(2):  # a map's batch too, which never counts as a served call
            wait_for(lambda: pool.stats()["available"] == 1)
            [error] = pool.map("c_sleep", [{}], timeout=0.2, return_exceptions=True)
            assert error.reason == "timeout"
        wait_for(lambda: pool.stats()["restarts"] == 4)
        assert pool.execute("pid") > 0
    delays = [e["delay"] for e in events if e["event"] == "worker_restart"]
    assert delays == [0.0] * 4


def test_a_crash_loop_backs_off_under_load_too():
    """Workers that die soon after start back off even when each took a call before dying."""
    events = []
    with Pool("helpers:DiesSoon", size=1, on_event=events.append, queue_timeout=1.0, **FAST) as pool:
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    pool.execute("work", {"seconds": 1.0})
                except SnakepitError:
                    pass

        clients = [threading.Thread(target=load) for _ in range(2)]
        for client in clients:
            client.start()
        try:
            wait_for(lambda: sum(1 for e in events if e["event"] == "worker_restart") >= 4, timeout=15)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=10)
    delays = [e["delay"] for e in events if e["event"] == "worker_restart"]
    assert max(delays) > 0


# -- timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sleep", "lock", "socket", "spin", "swallow"])
def test_a_timed_out_tool_is_interrupted_and_its_worker_takes_the_next_call_at_once(how):
    """Python code and interruptible waits stop at the deadline: the tool's finally runs, and the
    same worker serves the next call without waiting for cancel_grace (5 s here)."""
    with Pool(Faulty, size=1, timeout=0.5, cancel_grace=5.0) as pool:
        worker = pool.execute("pid")
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.execute("blocked", {"how": how, "seconds": 30})
        assert (info.value.category, info.value.reason) == ("timeout", "timeout")
        assert 0.5 <= time.monotonic() - started < 0.5 + 2.0  # at the deadline, not after cancel_grace (5 s)
        served = time.monotonic()
        assert pool.execute("counters", timeout=5) == {"pid": worker, "finished_calls": 1, "closed_streams": 0}
        assert time.monotonic() - served < 2.5  # 0.5 s promised; slack for a loaded machine
        assert pool.stats()["restarts"] == 0


def test_a_stream_blocked_between_two_yields_is_interrupted_at_its_deadline():
    with Pool(Faulty, size=1, timeout=0.5, cancel_grace=5.0) as pool:
        worker = pool.execute("pid")
        with pytest.raises(SnakepitError) as info:
            for _ in pool.stream("blocked_stream", {"seconds": 30}):
                pass
        assert info.value.reason == "timeout"
        served = time.monotonic()
        assert pool.execute("counters", timeout=5) == {"pid": worker, "finished_calls": 0, "closed_streams": 1}
        assert time.monotonic() - served < 2.5


@pytest.mark.parametrize("stop", ["halt", "break", "close", "callback_raises", "task_cancel"])
def test_every_way_of_stopping_a_call_interrupts_its_tool(stop):
    """HALT, break, close(), an exception from the callback and a cancelled task all interrupt a
    tool blocked between yields, as a timeout does."""
    with Pool(Faulty, size=1, cancel_grace=5.0) as pool:
        worker = pool.execute("pid")
        if stop == "halt":
            pool.execute_stream("blocked_stream", {}, lambda chunk: HALT)
        elif stop == "break":
            for _ in pool.stream("blocked_stream"):
                break
        elif stop == "close":
            stream = pool.stream("blocked_stream")
            next(stream)
            stream.close()
        elif stop == "callback_raises":

            def explode(chunk):
                raise LookupError("stop")

            with pytest.raises(LookupError):
                pool.execute_stream("blocked_stream", {}, explode)
        else:

            async def main():
                task = asyncio.ensure_future(pool.aexecute("blocked", {"how": "sleep"}))
                await await_for(lambda: pool.stats()["busy"] == 1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(main())
        served = time.monotonic()
        counters = pool.execute("counters", timeout=5)
        assert time.monotonic() - served < 2.5
        assert counters["pid"] == worker and counters["finished_calls"] + counters["closed_streams"] == 1


def test_execute_on_a_streaming_tool_that_is_not_a_generator_is_interrupted_too():
    with Pool(Faulty, size=1, timeout=0.5, cancel_grace=5.0) as pool:
        worker = pool.execute("pid")
        with pytest.raises(SnakepitError) as info:
            pool.execute("slow_list", {"seconds": 30})
        assert info.value.reason == "timeout"
        served = time.monotonic()
        assert pool.execute("counters", timeout=5) == {"pid": worker, "finished_calls": 1, "closed_streams": 0}
        assert time.monotonic() - served < 2.5


def test_a_cancel_never_cuts_a_log_record_in_half():
    """A tool cancelled while it writes a log record bigger than the events pipe: the record is
    finished first, so the pipe stays readable and heartbeats keep the worker alive."""
    events = []
    logging.getLogger("snakepit.worker").addFilter(quiet := lambda record: False)
    try:
        with Pool(Faulty, size=1, heartbeat_interval=0.2, heartbeat_timeout=1.0, on_event=events.append) as pool:
            worker = pool.execute("pid")
            for attempt in range(3):
                with pytest.raises(SnakepitError):
                    pool.execute("log_flood", {"size": 1 << 20}, timeout=0.3 + 0.05 * attempt)
            time.sleep(2.0)  # several heartbeat rounds: a torn frame would swallow every answer
            assert pool.execute("pid") == worker
            assert not [e for e in events if e["event"] in ("worker_hung", "worker_exit", "cancel_timeout")]
    finally:
        logging.getLogger("snakepit.worker").removeFilter(quiet)


@pytest.mark.parametrize("tool, args", [("c_sleep", {})])
def test_timeout_kills_a_worker_stuck_in_c_and_replaces_it(tool, args):
    with Pool(Faulty, size=1, cancel_grace=5.0, kill_grace=0.3, shutdown_timeout=2.0) as pool:
        stuck = pool.execute("pid")
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.execute(tool, args, timeout=0.3)
        elapsed = time.monotonic() - started
        assert (info.value.category, info.value.reason) == ("timeout", "timeout")
        assert 0.3 <= elapsed < 0.3 + 2.0  # near the deadline, not after the cleanup (cancel_grace: 5 s)
        wait_for(lambda: gone(stuck))
        assert pool.execute("pid") != stuck
        assert pool.stats()["restarts"] == 1


def test_timeout_of_a_stopped_worker():
    with Pool(Faulty, size=1, **FAST) as pool:
        stopped = pool.execute("pid")
        outcome = []
        call = threading.Thread(target=lambda: outcome.append(_error(pool.execute, "sleep", {"seconds": 2}, timeout=0.5)))
        call.start()
        wait_for(lambda: pool.stats()["busy"] == 1)
        os.kill(stopped, signal.SIGSTOP)
        call.join(5)
        assert outcome[0].reason == "timeout"
        assert pool.execute("pid") != stopped  # SIGTERM is held while stopped; SIGKILL is not


@pytest.mark.parametrize("how", ["execute", "map"])
def test_timeout_while_sending_large_arguments_to_a_stopped_worker(how):
    """Arguments bigger than the pipe are written while the worker reads them. A worker stopped
    while idle (before a heartbeat could notice) reads nothing: the write must give up at the
    call's deadline, and the worker, with half a frame in its pipe, is replaced."""
    with Pool(Faulty, size=1, heartbeat_interval=60, heartbeat_timeout=60, **FAST) as pool:
        stopped = pool.execute("pid")
        os.kill(stopped, signal.SIGSTOP)
        args = {"payload": b"x" * (4 << 20), "seconds": 0}
        started = time.monotonic()
        if how == "execute":
            error = _error(pool.execute, "hold", args, timeout=0.5)
        else:
            [error] = pool.map("hold", [args], timeout=0.5, return_exceptions=True)
        assert error.reason == "timeout"
        assert time.monotonic() - started < 0.5 + 2.0  # at the deadline: the worker never reads
        assert pool.execute("pid") != stopped
        wait_for(lambda: gone(stopped))


def test_async_large_arguments_to_a_stopped_worker_time_out_without_stalling_the_loop():
    with Pool(Faulty, size=1, heartbeat_interval=60, heartbeat_timeout=60, **FAST) as pool:
        stopped = pool.execute("pid")
        os.kill(stopped, signal.SIGSTOP)

        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            beat = asyncio.create_task(ticker())
            try:
                with pytest.raises(SnakepitError) as info:
                    await pool.aexecute("hold", {"payload": b"x" * (4 << 20), "seconds": 0}, timeout=0.5)
            finally:
                beat.cancel()
            return info.value, ticks

        error, ticks = asyncio.run(main())
        assert error.reason == "timeout"
        assert ticks >= 10  # the loop kept running while the write waited for the worker
        assert pool.execute("pid") != stopped


def test_cancelling_an_async_call_while_its_large_arguments_are_written_frees_the_worker():
    """The write goes on in its thread after the task is cancelled; the call it started is then
    cancelled too, so the worker comes back rather than staying checked out."""
    with Pool(Faulty, size=1, queue_timeout=5, **FAST) as pool:

        async def main():
            task = asyncio.create_task(pool.aexecute("hold", {"payload": b"x" * (64 << 20), "seconds": 30}))
            await asyncio.to_thread(wait_for, lambda: pool.stats()["busy"] == 1)  # checked out, writing or running
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert pool.execute("pid") > 0  # within queue_timeout: the worker was given back (or replaced)


def test_timeout_of_a_cooperative_stream_closes_the_generator():
    with Pool(Faulty, size=1, **FAST) as pool:
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            for _ in pool.stream("guarded", {"delay": 0.01}, timeout=0.3):
                pass
        assert info.value.reason == "timeout" and time.monotonic() - started < 0.3 + 2.0  # the stream is endless
        assert pool.execute("closed") == 1  # same worker: the generator's finally ran
        assert pool.stats()["restarts"] == 0


# -- cancellation -----------------------------------------------------------------------------------


def test_cancel_not_acknowledged_within_grace_kills_the_worker():
    with Pool(Faulty, size=1, cancel_grace=3.0, kill_grace=0.3, shutdown_timeout=5.0) as pool:
        stubborn = pool.execute("pid")

        def halt_once_stuck(chunk: int) -> object:
            time.sleep(0.3)  # by now the tool is stuck in C, past any point a cancel could reach
            return HALT

        started = time.monotonic()
        result = pool.execute_stream("stubborn", {"block": 30}, halt_once_stuck)
        assert result.halted and time.monotonic() - started < 0.3 + 2.0  # the caller does not wait (cancel_grace: 3 s)
        # The worker never reaches the next yield: it is killed, not handed out again dirty.
        assert pool.execute("pid") != stubborn
        assert pool.stats()["restarts"] == 1


def test_cancel_from_every_direction_reaches_the_worker():
    with Pool(Faulty, size=1, **FAST) as pool:
        pool.execute_stream("guarded", {}, lambda chunk: HALT)

        def explode(chunk):
            raise LookupError("from the callback")

        with pytest.raises(LookupError):
            pool.execute_stream("guarded", {}, explode)
        for _ in pool.stream("guarded"):
            break
        stream = pool.stream("guarded")
        next(stream)
        del stream
        assert pool.execute("closed") == 4 and pool.stats()["restarts"] == 0


# -- recycling --------------------------------------------------------------------------------------


def test_max_requests_recycles_between_calls_never_inside_one():
    with Pool(Faulty, size=1, max_requests=3, **FAST) as pool:
        first = [pool.execute("pid") for _ in range(3)]
        assert len(set(first)) == 1
        second = pool.execute("pid")
        assert second != first[0]
        # A stream is one request: recycling waits for its end, never cuts it short.
        for _ in range(3):
            assert sum(pool.stream("count", {"n": 5000})) == 5000
        stats = pool.stats()
        assert stats["recycled"] >= 1 and stats["recycled_by_reason"]["max_requests"] >= 1
        assert stats["restarts"] == 0


def test_worker_ttl_recycles_idle_workers():
    with Pool(Faulty, size=1, worker_ttl=0.5, heartbeat_interval=0.1, **FAST) as pool:
        first = pool.execute("pid")
        wait_for(lambda: pool.stats()["recycled"] >= 1, timeout=5)
        assert pool.execute("pid") != first
        assert pool.stats()["recycled_by_reason"]["worker_ttl"] >= 1


def test_memory_limit_recycles_after_the_call_that_crossed_it():
    with Pool(Faulty, size=1, memory_limit_mb=150, **FAST) as pool:
        big = pool.execute("pid")
        assert pool.execute("allocate", {"mb": 200}) == 1  # the call itself completes
        assert pool.execute("pid") != big
        stats = pool.stats()
        assert stats["recycled_by_reason"] == {"memory_limit": 1}
        assert all(w["rss"] < 150 << 20 for w in stats["worker_info"])


def test_recycling_a_one_worker_pool_keeps_serving():
    with Pool(Faulty, size=1, max_requests=1, **FAST) as pool:
        seen = [pool.execute("pid") for _ in range(5)]
        assert len(set(seen)) == 5
        assert pool.stats()["recycled"] >= 4


# -- hung idle workers ------------------------------------------------------------------------------


def test_a_hung_idle_worker_is_detected_and_replaced():
    with Pool(Faulty, size=2, heartbeat_interval=0.1, heartbeat_timeout=0.5, **FAST) as pool:
        victim = sorted(pids(pool))[0]
        started = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        wait_for(lambda: pool.stats()["hung"] == 1, timeout=5)
        assert time.monotonic() - started < 2.0
        wait_for(lambda: victim not in pids(pool) and len(pids(pool)) == 2)


# -- worker output ----------------------------------------------------------------------------------


def test_worker_output_reaches_logging_with_the_worker_id(caplog):
    caplog.set_level(logging.INFO, logger="snakepit.worker")
    with Pool("helpers:Toolbox", size=1) as pool:
        worker_id = pool.stats()["worker_info"][0]["id"]
        pool.execute("talk")
        wait_for(lambda: len([r for r in caplog.records if r.name == "snakepit.worker"]) >= 4)
    records = {r.getMessage().split("] ", 1)[1]: r for r in caplog.records if r.name == "snakepit.worker"}
    assert records["printed to stdout"].levelno == logging.INFO
    assert records["printed to stderr"].levelno == logging.WARNING
    assert records["logged at error"].levelno == logging.ERROR and records["logged at error"].worker_logger == "toolbox"
    assert records["written to fd 1 from C"].levelno == logging.INFO
    assert all(r.worker_id == worker_id for r in records.values())


def test_a_slow_log_handler_never_blocks_a_worker():
    gate = threading.Event()

    class Stuck(logging.Handler):
        def emit(self, record):
            gate.wait(30)

    handler = Stuck()
    logger = logging.getLogger("snakepit.worker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with Pool(Faulty, size=1) as pool:
            started = time.monotonic()
            assert pool.execute("chatty", {"lines": 30_000, "width": 200}, timeout=20) == 30_000  # ~6 MB
            assert time.monotonic() - started < 10
            gate.set()
    finally:
        gate.set()
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


# -- orphans, exit and Ctrl-C ---------------------------------------------------------------------------

OWNER = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, time
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test's view into an owner that hangs
    # Ctrl-C as an interactive program has it: a suite started in the background (`make test &`)
    # inherits SIGINT ignored, and so would this owner.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    from snakepit import Pool
    pool = Pool("helpers:Toolbox", size=2).start()
    print(" ".join(str(w["pid"]) for w in pool.stats()["worker_info"]), flush=True)
    mode = sys.argv[1]
    if mode == "wait":
        time.sleep(60)
    elif mode == "exit":
        pass  # interpreter exit without close(): atexit closes the pool
    elif mode == "stream":
        print("streaming", flush=True)
        for chunk in pool.stream("guarded", {{"delay": 0.01}}):
            pass
    """
).format(tests=os.path.dirname(os.path.abspath(__file__)))


def _owner(mode: str, **env: str) -> tuple[subprocess.Popen, list[int]]:
    # stderr to a file, not a pipe nobody reads while the owner runs: never full
    stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (it goes with the process)
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, mode], stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, **env}
    )
    proc.stderr_file = stderr  # type: ignore[attr-defined]
    worker_pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(worker_pids) == 2
    return proc, worker_pids


def test_workers_exit_when_the_owner_is_killed():
    owner, workers = _owner("wait")
    owner.kill()
    owner.wait()
    wait_for(lambda: all(gone(pid) for pid in workers), timeout=5)


def test_interpreter_exit_closes_the_pool_gracefully(tmp_path):
    marker = tmp_path / "cleanup"
    owner, workers = _owner("exit", SNAKEPIT_TEST_CLEANUP_FILE=str(marker))
    assert owner.wait(timeout=20) == 0
    assert {int(line) for line in marker.read_text().split()} == set(workers)  # cleanup ran
    assert all(gone(pid) for pid in workers)


def _sigmask(pid: int) -> str:
    """The process's blocked and ignored signals, as /proc shows them."""
    with open(f"/proc/{pid}/status") as status:
        return " ".join(line.strip() for line in status if line.startswith(("SigBlk", "SigIgn")))


def test_ctrl_c_while_a_stream_runs_ends_cleanly():
    owner, workers = _owner("stream")
    try:
        assert owner.stdout.readline().strip() == "streaming"
        owner.send_signal(signal.SIGINT)
        # KeyboardInterrupt, then the pool closes at exit: within cancel_grace, shutdown_timeout
        # and kill_grace (5 + 5 + 1 s) at worst; a hang would be forever.
        try:
            code = owner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mask = _sigmask(owner.pid)
            owner.send_signal(signal.SIGUSR1)  # its threads' stacks, to stderr
            time.sleep(1)
            owner.kill()
            owner.wait()
            owner.stderr_file.seek(0)
            pytest.fail(f"the owner did not exit after Ctrl-C ({mask}):\n{owner.stderr_file.read()[-6000:]}")
        assert code != 0
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    wait_for(lambda: all(gone(pid) for pid in workers), timeout=5)


def _error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except SnakepitError as exc:
        return exc
    raise AssertionError("expected a SnakepitError")


def test_with_no_worker_able_to_start_calls_fail_at_once_with_the_reason(tmp_path):
    marker = tmp_path / "broken"
    with Pool("helpers:BreaksOnRestart", size=1, adapter_args={"marker": str(marker)}, queue_timeout=30, **FAST) as pool:
        marker.write_text("broken from now on")
        os.kill(pool.execute("pid"), signal.SIGKILL)
        wait_for(lambda: pool.stats()["restarts"] >= 1 and pool.stats()["workers"] == 0)

        def fails_fast():
            started = time.monotonic()
            try:
                pool.execute("pid")
            except SnakepitError as exc:
                return exc if time.monotonic() - started < 1.0 else None
            return None

        error = wait_for(fails_fast, timeout=10)
        assert (error.category, error.reason) == ("worker", "worker_start_failed")
        assert "the model file is corrupt" in error.message and "RuntimeError" in error.traceback
        marker.unlink()
        wait_for(lambda: pool.stats()["workers"] == 1, timeout=15)
        assert pool.execute("pid") > 0

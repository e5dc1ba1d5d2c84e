"""Why a worker died (``details["cause"]``, counted in stats), the OOM killer's preference for
workers over the owner, and the quarantine of a slot whose workers keep dying."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from helpers import Toolbox, wait_for

from snakepit import Pool, SnakepitError

FAST = dict(cancel_grace=0.3, kill_grace=0.3, shutdown_timeout=2.0)


def _crash(pool: Pool, tool: str, args: dict) -> SnakepitError:
    with pytest.raises(SnakepitError) as caught:
        pool.execute(tool, args)
    assert (caught.value.category, caught.value.reason) == ("worker", "worker_crashed")
    return caught.value


def test_every_crash_says_why_and_the_pool_counts_deaths_by_cause():
    events: list[dict] = []
    deaths = [
        ("segfault", {}, "segfault"),
        ("kill_self", {"signum": signal.SIGABRT}, "abort"),
        ("kill_self", {"signum": signal.SIGKILL}, "killed"),
        ("kill_self", {"signum": signal.SIGTERM}, "killed"),
        ("crash", {"code": 3}, "exit"),
    ]
    with Pool(Toolbox, size=1, on_event=events.append, quarantine_after=None, **FAST) as pool:
        for tool, args, cause in deaths:
            error = _crash(pool, tool, args)
            assert error.details["cause"] == cause, (tool, args, error.details)
            wait_for(lambda: pool.stats()["workers"] == 1, timeout=15)
        assert error.details["exit_code"] == 3
        assert pool.stats()["deaths_by_cause"] == {"segfault": 1, "abort": 1, "killed": 2, "exit": 1}
    exits = [e["cause"] for e in events if e["event"] == "worker_exit" and not e["expected"]]
    assert exits == [cause for _, _, cause in deaths]


def test_workers_and_the_template_are_the_oom_killers_first_choice():
    with open("/proc/self/oom_score_adj") as f:
        owner = int(f.read())
    with Pool(Toolbox, size=2) as pool:
        workers = [info["pid"] for info in pool.stats()["worker_info"]]
        template = psutil.Process(workers[0]).ppid()
        for pid in [*workers, template]:
            with open(f"/proc/{pid}/oom_score_adj") as f:
                assert int(f.read()) == min(1000, owner + 500)


def _memory_cgroup(pid: int) -> tuple[str, str, str] | None:
    """A new memory cgroup beside ``pid``'s: (its directory, limit file, procs file); None
    where this machine does not let us make one."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):
            base, limit = f"/sys/fs/cgroup/memory{path.rstrip('/')}", "memory.limit_in_bytes"
            break
    else:
        base, limit = f"/sys/fs/cgroup{lines[-1][2].rstrip('/')}", "memory.max"
    directory = f"{base}/snakepit-test-{os.getpid()}"
    try:
        os.mkdir(directory)
    except OSError:
        return None
    if not os.path.exists(f"{directory}/{limit}"):
        os.rmdir(directory)
        return None
    return directory, f"{directory}/{limit}", f"{directory}/cgroup.procs"


def test_a_worker_the_oom_killer_ends_is_reported_as_oom():
    with Pool(Toolbox, size=1, **FAST) as pool:
        worker = pool.stats()["worker_info"][0]["pid"]
        cgroup = _memory_cgroup(worker)
        if cgroup is None:
            pytest.skip("cannot create a memory cgroup here")
        directory, limit, procs = cgroup
        try:
            with open(limit, "w") as f:
                f.write(str(64 << 20))
            swap = f"{directory}/memory.memsw.limit_in_bytes"
            if os.path.exists(swap):
                try:
                    with open(swap, "w") as f:
                        f.write(str(64 << 20))
                except OSError:
                    pass
            with open(procs, "w") as f:
                f.write(str(worker))
            error = _crash(pool, "big", {"size": 512 << 20})
            assert (error.details["signal"], error.details["cause"]) == ("SIGKILL", "oom")
            wait_for(lambda: pool.stats()["workers"] == 1, timeout=15)  # after the death was counted
            assert pool.stats()["deaths_by_cause"] == {"oom": 1}
            assert pool.execute("add", {"a": 1}) == 2
        finally:
            wait_for(lambda: _rmdir(directory), timeout=10)


def _rmdir(directory: str) -> bool:
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        return True
    except OSError:  # still holds the dying worker
        return False
    return True


def test_a_slot_whose_workers_keep_dying_is_quarantined_while_the_others_serve():
    events: list[dict] = []
    with Pool(Toolbox, size=2, quarantine_after=2, quarantine_window=30, on_event=events.append, **FAST) as pool:
        for _ in range(2):
            victim = next(w for w in pool.stats()["worker_info"] if w["slot"] == 0)
            os.kill(victim["pid"], signal.SIGKILL)
            wait_for(lambda victim=victim: all(w["pid"] != victim["pid"] for w in pool.stats()["worker_info"]))
            if not any(e["event"] == "worker_quarantined" for e in events):
                wait_for(lambda: len(pool.stats()["worker_info"]) == 2, timeout=15)
        stats = pool.stats()  # quarantined for a second, unless this machine was slower than that
        assert list(stats["quarantined"]) in ([0], []) and all(0 < left <= 1.0 for left in stats["quarantined"].values())
        assert pool.execute("add", {"a": 2, "b": 2}) == 4  # slot 1 keeps serving
        [event] = [e for e in events if e["event"] == "worker_quarantined"]
        assert (event["slot"], event["deaths"], event["delay"]) == (0, 2, 1.0)
        wait_for(lambda: sorted(w["slot"] for w in pool.stats()["worker_info"]) == [0, 1], timeout=15)
        [back] = [w for w in pool.stats()["worker_info"] if w["slot"] == 0]
        assert back["started_at"] - event["time"] >= 0.99  # it waited out the quarantine
        assert pool.stats()["quarantined"] == {}


def test_quarantine_options_are_checked():
    for options in ({"quarantine_after": 0}, {"quarantine_window": -1}, {"quarantine_after": 1.5}):
        with pytest.raises(SnakepitError) as caught:
            Pool(Toolbox, size=1, **options)
        assert caught.value.reason == "invalid_config"


def test_a_fatal_signal_brings_the_workers_python_stacks_a_sigkill_none():
    """faulthandler writes every thread's stack into the worker's spill segment, which the owner
    reads at the post-mortem."""
    events: list[dict] = []
    with Pool(Toolbox, size=1, on_event=events.append, quarantine_after=None, **FAST) as pool:
        error = _crash(pool, "segfault", {})
        stack = error.details["python_stack"]
        assert stack.startswith("Fatal Python error: Segmentation fault")
        assert "in segfault" in stack and "helpers.py" in stack  # the tool's own frame
        assert stack.count("Thread 0x") >= 2  # every thread: the control thread too
        wait_for(lambda: pool.stats()["workers"] == 1, timeout=15)
        for signum in (signal.SIGKILL, signal.SIGTERM):
            error = _crash(pool, "kill_self", {"signum": signum})
            assert "python_stack" not in error.details
            wait_for(lambda: pool.stats()["workers"] == 1, timeout=15)
        error = _crash(pool, "kill_self", {"signum": signal.SIGABRT})
        assert "Fatal Python error: Aborted" in error.details["python_stack"]
    exits = [e for e in events if e["event"] == "worker_exit" and not e["expected"]]
    assert ["python_stack" in e for e in exits] == [True, False, False, True]


def test_the_thread_profile_brings_the_stacks_of_every_call_thread():
    from threaded_tools import Threaded

    with Pool(Threaded, size=1, threads_per_worker=2, **FAST) as pool:
        error = _crash(pool, "segfault", {})
        assert error.details["cause"] == "segfault" and "in segfault" in error.details["python_stack"]
        assert error.details["python_stack"].count("Thread 0x") >= 3  # both call threads, and the others

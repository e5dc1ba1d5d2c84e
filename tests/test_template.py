"""Warm start: workers forked by a template process (``start_method="forkserver"``), and the
cold start it falls back to. See snakepit/_backends/process/template.py."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from helpers import Toolbox, gone, wait_for

from snakepit import Pool, SnakepitError

FAST = dict(cancel_grace=0.3, kill_grace=0.3, shutdown_timeout=2.0)


def _worker_pids(pool: Pool) -> list[int]:
    return [info["pid"] for info in pool.stats()["worker_info"]]


def _template_of(pids: list[int]) -> psutil.Process:
    parents = {psutil.Process(pid).ppid() for pid in pids}
    assert len(parents) == 1 and os.getpid() not in parents, parents
    template = psutil.Process(parents.pop())
    assert template.ppid() == os.getpid()
    assert "template_process" in " ".join(template.cmdline())
    return template


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # gone, or a zombie: not a template of this pool
        return []


def test_workers_are_forked_by_a_single_threaded_template_and_lead_their_own_groups():
    with Pool(Toolbox, size=2) as pool:
        pids = _worker_pids(pool)
        template = _template_of(pids)
        assert template.num_threads() == 1 and template.name() == "snakepit-tmpl"
        assert {psutil.Process(pid).name() for pid in pids} == {"snakepit-worker"}  # in ps and top
        assert all(os.getpgid(pid) == pid for pid in pids)
        assert pool.execute("add", {"a": 2, "b": 3}) == 5
    wait_for(lambda: gone(template.pid), timeout=5)


def test_spawn_starts_each_worker_as_a_fresh_interpreter_of_the_owner():
    with Pool(Toolbox, size=2, start_method="spawn") as pool:
        assert {psutil.Process(pid).ppid() for pid in _worker_pids(pool)} == {os.getpid()}
        assert not [p for p in psutil.Process().children() if "template_process" in " ".join(_cmdline(p))]


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
@pytest.mark.parametrize(
    "tool, args, death",
    [
        ("crash", {"code": 7}, {"exit_code": 7}),
        ("kill_self", {"signum": signal.SIGKILL}, {"exit_code": -signal.SIGKILL, "signal": "SIGKILL"}),
        ("segfault", {}, {"exit_code": -signal.SIGSEGV, "signal": "SIGSEGV"}),
    ],
)
def test_a_dead_worker_reports_its_exit_code_or_signal_whoever_started_it(start_method, tool, args, death):
    with Pool(Toolbox, size=1, start_method=start_method, **FAST) as pool:
        with pytest.raises(SnakepitError) as caught:
            pool.execute(tool, args)
        assert (caught.value.category, caught.value.reason) == ("worker", "worker_crashed")
        assert {key: caught.value.details.get(key) for key in death} == death
        wait_for(lambda: pool.stats()["workers"] == 1, timeout=15)
        assert pool.execute("add", {"a": 1}) == 2


def test_a_replacement_is_forked_by_the_template_too():
    with Pool(Toolbox, size=1, **FAST) as pool:
        first = _worker_pids(pool)
        template = _template_of(first)
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: pool.stats()["restarts"] >= 1 and pool.stats()["workers"] == 1, timeout=15)
        assert _template_of(_worker_pids(pool)).pid == template.pid


def test_when_the_template_dies_its_workers_go_and_replacements_start_cold(caplog):
    caplog.set_level(logging.WARNING, logger="snakepit")
    with Pool(Toolbox, size=2, **FAST) as pool:
        forked = _worker_pids(pool)
        template = _template_of(forked)
        template.kill()
        wait_for(lambda: all(gone(pid) for pid in forked), timeout=5)
        wait_for(lambda: pool.stats()["workers"] == 2 and not set(_worker_pids(pool)) & set(forked), timeout=20)
        assert {psutil.Process(pid).ppid() for pid in _worker_pids(pool)} == {os.getpid()}
        assert pool.execute("add", {"a": 1, "b": 1}) == 2
    assert any("start cold" in record.getMessage() for record in caplog.records)


def test_an_adapter_module_that_starts_threads_at_import_starts_its_workers_cold(caplog):
    caplog.set_level(logging.WARNING, logger="snakepit")
    with Pool("threads_at_import:Threaded", size=2) as pool:
        pids = _worker_pids(pool)
        assert {psutil.Process(pid).ppid() for pid in pids} == {os.getpid()}
        assert {pool.execute("pid") for _ in range(2)} <= set(pids)  # its own workers, whichever serve
    assert any("thread" in record.getMessage() and "cold" in record.getMessage() for record in caplog.records)


def test_an_adapter_module_that_opens_files_at_import_starts_its_workers_cold(caplog, tmp_path, monkeypatch):
    log = tmp_path / "adapter.log"
    monkeypatch.setenv("SNAKEPIT_TEST_LOG", str(log))
    caplog.set_level(logging.WARNING, logger="snakepit")
    with Pool("files_at_import:Logging", size=2) as pool:
        assert {psutil.Process(pid).ppid() for pid in _worker_pids(pool)} == {os.getpid()}
        assert pool.execute("log", {"line": "one"}) == str(log)  # its own file, not a reused number
        pool.execute("log", {"line": "two"})
    assert log.read_text().split() == ["one", "two"]
    assert any("left 1 file(s) open" in record.getMessage() and "cold" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_worker_exits_as_an_interpreter_does_waiting_for_its_threads(start_method, tmp_path):
    with Pool("work_at_exit:Background", size=1, start_method=start_method) as pool:
        pool.execute("leave_work", {"folder": str(tmp_path)})
    # close() returned once the worker had exited: after its thread and its executor's job
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "executor").read_text() == "done"


def test_forked_workers_draw_different_random_numbers():
    with Pool("numpy_draws:Draws", size=2) as pool:
        _template_of(_worker_pids(pool))
        with ThreadPoolExecutor(2) as both:  # two calls that overlap run on the two workers
            draws = list(both.map(lambda _: pool.execute("draw", {"wait": 0.3}), range(2)))
    assert draws[0]["pid"] != draws[1]["pid"]
    assert draws[0]["numpy"] != draws[1]["numpy"] and draws[0]["random"] != draws[1]["random"]


def test_an_unknown_start_method_or_one_for_ray_is_refused():
    for options in ({"start_method": "fork"}, {"backend": "ray", "start_method": "spawn"}):
        with pytest.raises(SnakepitError) as caught:
            Pool(Toolbox, size=1, **options)
        assert (caught.value.category, caught.value.reason) == ("validation", "invalid_config")


OWNER = textwrap.dedent(
    """
    import os, sys, time
    import psutil
    sys.path.insert(0, os.getcwd())
    from helpers import Toolbox
    from snakepit import Pool
    pool = Pool(Toolbox, size=2).start()
    workers = [info["pid"] for info in pool.stats()["worker_info"]]
    print(psutil.Process(workers[0]).ppid(), *workers, flush=True)
    time.sleep(60)
    """
)


def test_when_the_owner_is_killed_the_template_and_every_worker_go():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(__file__))
    try:
        template, *workers = (int(pid) for pid in owner.stdout.readline().split())
        assert template != owner.pid and len(workers) == 2
        owner.kill()
        owner.wait()
        wait_for(lambda: all(gone(pid) for pid in (template, *workers)), timeout=5)
    finally:
        owner.kill()
        owner.wait()


def test_an_answer_left_unread_by_an_interrupted_request_is_not_taken_for_the_next_ones():
    # A Ctrl-C between a request to the template and its answer leaves the answer in the socket.
    with Pool(Toolbox, size=1, **FAST) as pool:
        template = pool._supervisor.backend._template
        with template._lock:
            template._send(["reap", 1])  # asked, and its asker gone before the answer came
        first = _worker_pids(pool)[0]
        with pytest.raises(SnakepitError):
            pool.execute("crash", {"code": 7})  # reaped, then replaced: two requests and answers
        wait_for(lambda: pool.stats()["available"] == 1 and _worker_pids(pool)[0] != first, timeout=15)
        assert pool._supervisor.backend._template is template  # still forking workers
        assert psutil.Process(_worker_pids(pool)[0]).ppid() == template.pid


def test_a_forked_worker_waited_for_by_many_threads_at_once_closes_its_pidfd_once():
    """The supervisor reaping a dead worker and callers whose calls it died under may wait for
    it at the same moment: each gets its exit status, and its own pidfd is closed once -- a
    second close would take whatever descriptor was given that number meanwhile (seen as a slot's
    eventfd going bad under the thread profile)."""
    import threading

    from snakepit._backends.process.template import ForkedProcess

    with Pool(Toolbox, size=1, start_method="forkserver") as pool:
        victim = pool.execute("state")["pid"]
        [handle] = pool._dispatcher.workers.values()
        process = handle.conn.process
        assert isinstance(process, ForkedProcess)
        canaries: list[int] = []
        codes: list[int] = []
        start = threading.Barrier(9)

        def waiter() -> None:
            start.wait()
            codes.append(process.wait(30))
            canaries.append(os.eventfd(0))  # takes the lowest free number, as a slot's eventfd does

        waiters = [threading.Thread(target=waiter) for _ in range(8)]
        for thread in waiters:
            thread.start()
        os.kill(victim, signal.SIGKILL)
        start.wait()
        for thread in waiters:
            thread.join(30)
        assert codes == [-signal.SIGKILL] * 8
        for fd in canaries:  # every one still open: none was taken by a second close
            os.eventfd_write(fd, 1)
            os.close(fd)
        wait_for(lambda: (now := pool.stats())["available"] == 1 and now["worker_info"][0]["pid"] != victim, timeout=30)
        assert pool.execute("state")["pid"] != victim

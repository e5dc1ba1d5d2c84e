"""Session affinity against real workers: each row of the SPEC table, for calls and streams."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest
from helpers import Toolbox, wait_for

from snakepit import Affinity, Pool, SnakepitError


def worker_state(pool: Pool, worker_id: int) -> str | None:
    for info in pool.stats()["worker_info"]:
        if info["id"] == worker_id:
            return info["state"]
    return None


class Occupied:
    """Keeps one session's worker busy with a sleep until the block ends."""

    def __init__(self, pool: Pool, session_id: str, seconds: float = 0.6) -> None:
        self.pool = pool
        self.worker = pool.session(session_id).worker_id
        assert self.worker is not None, "pin the session first"
        self.errors: list[SnakepitError] = []
        self.thread = threading.Thread(target=self._sleep, args=(session_id, seconds))

    def _sleep(self, session_id: str, seconds: float) -> None:
        try:
            self.pool.execute("sleep", {"seconds": seconds}, session_id=session_id, affinity="strict_queue")
        except SnakepitError as exc:  # e.g. the test kills this worker on purpose
            self.errors.append(exc)

    def __enter__(self) -> int:
        self.thread.start()
        wait_for(lambda: worker_state(self.pool, self.worker) == "busy")
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.thread.join(10)


@pytest.fixture
def pool():
    with Pool(Toolbox, size=2, queue_timeout=5) as pool:
        yield pool


def pid_of(pool: Pool, **call) -> int:
    return pool.execute("state", **call)["pid"]


def pinned_pid(pool: Pool, session_id: str) -> int:
    """Pin ``session_id`` (first call behaves as hint) and return its worker's pid."""
    return pid_of(pool, session_id=session_id)


# -- the table, row by row ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Affinity))
def test_idle_pinned_worker_serves_the_session(pool, mode):
    pid = pinned_pid(pool, "s")
    assert {pid_of(pool, session_id="s", affinity=mode) for _ in range(6)} == {pid}


def test_hint_busy_worker_runs_elsewhere_and_repins(pool):
    first = pinned_pid(pool, "s")
    with Occupied(pool, "s") as busy_worker:
        other = pid_of(pool, session_id="s", affinity="hint")
        assert other != first
        assert pool.session("s").worker_id != busy_worker  # re-pinned to where it ran
    assert pid_of(pool, session_id="s") == other


def test_hint_waits_in_the_pool_queue_when_no_worker_is_idle():
    with Pool(Toolbox, size=1) as pool:
        pinned_pid(pool, "s")
        with Occupied(pool, "s", seconds=0.4):
            started = time.monotonic()
            pool.execute("add", {"a": 1}, session_id="s", affinity="hint")
            assert time.monotonic() - started > 0.1
        assert pool.stats()["queued"] >= 1


def test_strict_queue_waits_for_its_worker_even_with_another_idle(pool):
    pid = pinned_pid(pool, "s")
    with Occupied(pool, "s", seconds=0.4):
        assert pool.stats()["available"] == 1
        started = time.monotonic()
        assert pid_of(pool, session_id="s", affinity="strict_queue") == pid
        assert time.monotonic() - started > 0.1


def test_strict_fail_fast_busy_worker_fails_at_once(pool):
    pinned_pid(pool, "s")
    with Occupied(pool, "s"):
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1}, session_id="s", affinity="strict_fail_fast")
        assert time.monotonic() - started < 2.0  # at once, not after queue_timeout (10 s)
        assert (info.value.category, info.value.reason) == ("pool", "worker_busy")


@pytest.mark.parametrize("mode", ["strict_queue", "strict_fail_fast"])
def test_strict_gone_worker_fails_once_then_repins(pool, mode):
    pid = pinned_pid(pool, "s")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pool.stats()["restarts"] == 1)
    with pytest.raises(SnakepitError) as info:
        pool.execute("add", {"a": 1}, session_id="s", affinity=mode)
    assert (info.value.category, info.value.reason) == ("pool", "session_worker_unavailable")
    new_pid = pid_of(pool, session_id="s", affinity=mode)  # the pin was dropped: pins afresh
    assert new_pid != pid
    assert pid_of(pool, session_id="s", affinity=mode) == new_pid


def test_hint_gone_worker_moves_silently(pool):
    pid = pinned_pid(pool, "s")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pool.stats()["restarts"] == 1)
    assert pid_of(pool, session_id="s", affinity="hint") != pid


def test_strict_queue_waiters_fail_when_their_worker_dies(pool):
    pid = pinned_pid(pool, "s")
    outcome: list[BaseException] = []
    with Occupied(pool, "s", seconds=5) as busy:

        def wait_in_line():
            try:
                pool.execute("add", {"a": 1}, session_id="s", affinity="strict_queue")
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait_in_line)
        waiter.start()
        wait_for(lambda: pool.stats()["waiting"] == 1)
        os.kill(pid, signal.SIGKILL)
        waiter.join(10)
        assert worker_state(pool, busy) is None
    assert [getattr(e, "reason", e) for e in outcome] == ["session_worker_unavailable"]


# -- streams obey the same rules ----------------------------------------------------------------


def test_streams_follow_affinity(pool):
    pid = pinned_pid(pool, "s")
    with Occupied(pool, "s", seconds=0.4):
        with pytest.raises(SnakepitError) as info:
            pool.stream("count", {"n": 2}, session_id="s", affinity="strict_fail_fast")
        assert info.value.reason == "worker_busy"
        # strict_queue: the stream waits for its worker (Snakepit itself would refuse; we queue).
        with pool.stream("count", {"n": 2}, session_id="s", affinity="strict_queue") as chunks:
            assert [c["number"] for c in chunks] == [0, 1]
            assert chunks.worker_id == pool.session("s").worker_id
    result = pool.execute_stream("count", {"n": 1}, lambda c: None, session_id="s", affinity="strict_queue")
    assert pid_of(pool, session_id="s", affinity="strict_queue") == pid
    assert result.worker_id == pool.session("s").worker_id


# -- where the mode comes from ------------------------------------------------------------------


def test_mode_from_pool_session_and_call():
    with Pool(Toolbox, size=2, affinity="strict_fail_fast") as pool:
        assert pool.affinity is Affinity.STRICT_FAIL_FAST
        pinned_pid(pool, "s")
        with Occupied(pool, "s") as busy:
            with pytest.raises(SnakepitError) as info:  # the pool's mode
                pool.execute("add", {"a": 1}, session_id="s")
            assert info.value.reason == "worker_busy"
            pool.execute("add", {"a": 1}, session_id="s", affinity="hint")  # the call's mode wins
            hinted = pool.session("s", affinity=Affinity.HINT)  # the session's mode
            hinted.execute("add", {"a": 1})
            assert hinted.worker_id != busy  # ran on the idle worker, and re-pinned there


def test_unknown_modes_are_validation_errors(pool):
    with pytest.raises(SnakepitError) as info:
        pool.execute("add", {"a": 1}, session_id="s", affinity="sticky")
    assert (info.value.category, info.value.reason) == ("validation", "invalid_arguments")
    with pytest.raises(SnakepitError) as info:
        pool.session("s", affinity="sometimes")
    assert info.value.reason == "invalid_arguments"
    with pytest.raises(SnakepitError) as info:
        Pool(Toolbox, size=1, affinity="nope")
    assert (info.value.category, info.value.reason) == ("validation", "invalid_config")
    for bad in ("", 42):
        with pytest.raises(SnakepitError):
            pool.execute("add", {"a": 1}, session_id=bad)


# -- sessions ------------------------------------------------------------------------------------


def test_session_handles(pool):
    with pool.session("handle") as session:
        pid = session.execute("state")["pid"]
        assert session.worker_id is not None
        assert [c["number"] for c in session.stream("count", {"n": 3})] == [0, 1, 2]
        seen = []
        session.execute_stream("count", {"n": 2}, seen.append)
        assert len(seen) == 2 and session.execute("state")["pid"] == pid
        assert pool.stats()["sessions"] >= 1
    assert session.worker_id is None  # closed: the pin is gone


def test_session_quota():
    with Pool(Toolbox, size=1, max_sessions=2) as pool:
        pool.execute("add", {"a": 1}, session_id="a")
        pool.session("b")
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1}, session_id="c")
        assert (info.value.category, info.value.reason) == ("pool", "session_quota_exceeded")
        with pytest.raises(SnakepitError):
            pool.session("c")
        pool.session("a").close()
        pool.execute("add", {"a": 1}, session_id="c")


def test_sessions_expire_after_ttl():
    with Pool(Toolbox, size=1, session_ttl=0.2) as pool:
        for i in range(3):
            pool.execute("add", {"a": 1}, session_id=f"s{i}")
        assert pool.stats()["sessions"] == 3
        wait_for(lambda: pool.stats()["sessions"] == 0, timeout=5)
        # The timer swept them, without any call or stats() in between.
        # The supervisor's timer sweeps an idle session even if nobody calls or asks for stats.
        store = pool._dispatcher.sessions
        before = store.expired_total
        pool.execute("add", {"a": 1}, session_id="fresh")
        wait_for(lambda: store.expired_total == before + 1, timeout=5)
        assert "fresh" not in store


# -- the queue -----------------------------------------------------------------------------------


def test_pool_saturated_when_the_queue_is_full():
    with Pool(Toolbox, size=1, max_queue=2) as pool:
        blockers = [threading.Thread(target=pool.execute, args=("sleep", {"seconds": 0.5})) for _ in range(3)]
        for t in blockers:
            t.start()
        wait_for(lambda: pool.stats()["waiting"] == 2)
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1})
        assert time.monotonic() - started < 2.0  # at once, not after queue_timeout (10 s)
        assert (info.value.category, info.value.reason) == ("pool", "pool_saturated")
        for t in blockers:
            t.join(10)
        assert pool.stats()["pool_saturated"] == 1


def test_queue_timeout_and_call_timeout_cover_waiting():
    with Pool(Toolbox, size=1, queue_timeout=0.5) as pool:
        blocker = threading.Thread(target=pool.execute, args=("sleep", {"seconds": 8.0}))
        blocker.start()
        wait_for(lambda: pool.stats()["busy"] == 1)
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1})
        assert (info.value.category, info.value.reason, info.value.details["stage"]) == ("timeout", "queue_timeout", "queued")
        assert 0.45 < time.monotonic() - started < 2.5  # at queue_timeout, not when the worker frees (8 s)
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1}, timeout=0.2)  # the call's own deadline comes first
        assert (info.value.category, info.value.reason, info.value.details["stage"]) == ("timeout", "timeout", "queued")
        assert time.monotonic() - started < 2.5
        blocker.join(10)
        stats = pool.stats()
        assert stats["queue_timeouts"] == 1 and stats["timeouts"] == 1


def test_load_every_call_ends_and_the_counters_add_up():
    """Thousands of concurrent requests against a small pool with a small queue."""
    threads, per_thread = 40, 100
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    with Pool(Toolbox, size=2, max_queue=8, queue_timeout=0.03) as pool:

        def client(index: int) -> None:
            local: Counter[str] = Counter()
            for i in range(per_thread):
                session = f"s{index % 5}" if i % 3 == 0 else None
                try:
                    if i % 10 == 0:
                        assert len(list(pool.stream("count", {"n": 3}, session_id=session))) == 3
                    elif i % 5 == 0:  # slow calls make waiters time out
                        assert pool.execute("sleep", {"seconds": 0.05}, session_id=session) == 0.05
                    else:
                        assert pool.execute("add", {"a": i, "b": index}, session_id=session) == i + index
                    local["ok"] += 1
                except SnakepitError as exc:
                    local[exc.reason] += 1
            with lock:
                outcomes.update(local)

        workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
        assert not any(t.is_alive() for t in workers)
        stats = pool.stats()
    total = threads * per_thread
    assert sum(outcomes.values()) == total
    assert set(outcomes) <= {"ok", "pool_saturated", "queue_timeout"}
    assert stats["requests"] == total
    assert stats["errors"] == outcomes["pool_saturated"] + outcomes["queue_timeout"]
    assert stats["pool_saturated"] == outcomes["pool_saturated"]
    assert stats["queue_timeouts"] == outcomes["queue_timeout"]
    assert all(outcomes[kind] > 0 for kind in ("ok", "pool_saturated", "queue_timeout")), outcomes
    assert stats["workers"] == 2 and stats["busy"] == 0 and stats["waiting"] == 0


def test_a_session_is_in_use_while_its_call_runs_however_long():
    with Pool(Toolbox, size=2, session_ttl=1.0) as pool:
        pinned = pool.execute("state", session_id="s", affinity="strict_queue")["pid"]
        pool.execute("sleep", {"seconds": 2.5}, session_id="s")  # longer than the session's TTL
        assert pool.stats()["sessions"] == 1  # its time to live starts when the call ends
        assert pool.execute("state", session_id="s")["pid"] == pinned
        wait_for(lambda: pool.stats()["sessions"] == 0, timeout=10)  # and it expires once unused

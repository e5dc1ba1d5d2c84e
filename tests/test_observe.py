"""Observability: events as data and as log records, per-worker stats, progress helpers."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest
from helpers import Faulty, Toolbox, wait_for

from snakepit import Pool, SnakepitError
from snakepit.progress import progress_callback, track


def test_events_reach_on_event_as_plain_data():
    events: list[dict] = []
    with Pool(Faulty, size=1, max_requests=2, cancel_grace=0.2, kill_grace=0.2, on_event=events.append) as pool:
        names = lambda: [e["event"] for e in events]  # noqa: E731
        assert names()[:2] == ["worker_start", "worker_ready"]
        first = pool.execute("pid")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "worker_restart" in names() and names().count("worker_ready") == 2)
        exit_event = next(e for e in events if e["event"] == "worker_exit")
        assert exit_event["pid"] == first and exit_event["signal"] == "SIGKILL" and not exit_event["expected"]
        with pytest.raises(SnakepitError):
            pool.execute("c_sleep", {"seconds": 5}, timeout=0.1)  # stuck in C: killed after cancel_grace
        assert any(e["event"] == "timeout" and e["tool"] == "c_sleep" for e in events)
        wait_for(lambda: "cancel_timeout" in names())
        wait_for(lambda: names().count("worker_ready") == 3)
        pool.execute("pid")
        pool.execute("pid")  # second call: max_requests reached
        wait_for(lambda: "worker_recycle" in names())
    assert all(isinstance(e["time"], float) for e in events)
    recycle = next(e for e in events if e["event"] == "worker_recycle")
    assert recycle["reason"] == "max_requests"


def test_saturation_and_queue_timeout_events():
    events: list[dict] = []
    with Pool(Toolbox, size=1, max_queue=1, queue_timeout=0.1, on_event=events.append) as pool:
        blocker = threading.Thread(target=pool.execute, args=("sleep", {"seconds": 0.5}))
        blocker.start()
        wait_for(lambda: pool.stats()["busy"] == 1)

        def wait_and_fail() -> None:
            with pytest.raises(SnakepitError):
                pool.execute("add", {"a": 1})

        waiter = threading.Thread(target=wait_and_fail)
        waiter.start()
        wait_for(lambda: pool.stats()["waiting"] == 1)
        with pytest.raises(SnakepitError):
            pool.execute("add", {"a": 1})  # the queue holds max_queue=1 already
        waiter.join()
        blocker.join()
    names = [e["event"] for e in events]
    assert "pool_saturated" in names and "queue_timeout" in names


def test_events_are_log_records_with_the_event_name(caplog):
    caplog.set_level(logging.INFO, logger="snakepit")
    with Pool(Toolbox, size=1):
        pass
    events = [r.snakepit_event for r in caplog.records if hasattr(r, "snakepit_event")]
    assert events[:2] == ["worker_start", "worker_ready"] and "worker_exit" in events
    exit_record = next(r for r in caplog.records if getattr(r, "snakepit_event", None) == "worker_exit")
    assert exit_record.expected is True and exit_record.exit_code == 0


def test_a_failing_event_callback_does_not_break_the_pool():
    def broken(event):
        raise RuntimeError("exporter down")

    with Pool(Toolbox, size=1, on_event=broken) as pool:
        assert pool.execute("add", {"a": 1}) == 2


def test_events_reach_every_subscriber_until_it_unsubscribes(caplog):
    """pool.subscribe(): as many listeners as there are front ends (a served pool streams them
    to remote callers), each its own dict; one that raises is logged and the others go on."""
    first: list[dict] = []
    second: list[dict] = []

    def broken(event: dict) -> None:
        raise RuntimeError("exporter down")

    with Pool(Toolbox, size=1, on_event=first.append) as pool:
        unsubscribe = pool.subscribe(second.append)
        stop_broken = pool.subscribe(broken)
        with pytest.raises(SnakepitError):
            pool.execute("sleep", {"seconds": 5}, timeout=0.05)
        wait_for(lambda: any(e["event"] == "timeout" for e in second))
        wait_for(lambda: any(e["event"] == "timeout" for e in first))
        mine = next(e for e in second if e["event"] == "timeout")
        mine["tool"] = "changed"  # each subscriber's own copy
        assert next(e for e in first if e["event"] == "timeout")["tool"] == "sleep"
        unsubscribe()
        stop_broken()
        stop_broken()  # twice: nothing more to do
        seen = len(second)
        with pytest.raises(SnakepitError):
            pool.execute("sleep", {"seconds": 5}, timeout=0.05)
        wait_for(lambda: sum(e["event"] == "timeout" for e in first) == 2)
        pool._dispatcher.observer.flush()
        assert len(second) == seen
    assert any("an event subscriber failed" in record.getMessage() for record in caplog.records)
    with pytest.raises(SnakepitError) as info:
        pool.subscribe("not callable")  # type: ignore[arg-type]
    assert info.value.reason == "invalid_arguments"


def test_a_slow_listener_holds_back_a_bounded_backlog_of_telemetry(caplog):
    """Tools may send telemetry faster than a listener takes it: what waits for delivery is
    bounded, the rest dropped and counted in a warning (the pool's own events have a courier of
    their own, unbounded: they are few)."""
    from snakepit._observe import _TELEMETRY_BACKLOG, Observer

    caplog.set_level(logging.WARNING, logger="snakepit.telemetry")
    release = threading.Event()
    delivering = threading.Event()
    got: list[dict] = []

    def slow(event: dict) -> None:
        delivering.set()
        release.wait(30)
        got.append(event)

    observer = Observer(slow)
    try:
        observer.telemetry({"event": "telemetry", "name": "first"})
        assert delivering.wait(30)  # the delivery thread is busy with it: the rest wait, or are dropped
        for i in range(3 * _TELEMETRY_BACKLOG):
            observer.telemetry({"event": "telemetry", "name": "tick", "measurements": {"i": i}})
        release.set()
        observer.flush(30)
    finally:
        observer.close()
    ticks = [e for e in got if e["name"] == "tick"]
    assert len(ticks) == _TELEMETRY_BACKLOG
    warning = next(r for r in caplog.records if "telemetry events dropped" in r.getMessage())
    assert str(3 * _TELEMETRY_BACKLOG - len(ticks)) in warning.getMessage()
    assert observer.telemetry_dropped == 3 * _TELEMETRY_BACKLOG - len(ticks)  # stats()["telemetry_dropped"]


def test_per_worker_stats():
    with Pool(Toolbox, size=2) as pool:
        for i in range(4):
            pool.execute("add", {"a": i})
        stats = pool.stats()
    infos = stats["worker_info"]
    assert len(infos) == 2
    for info in infos:
        assert set(info) >= {"id", "pid", "state", "requests", "rss", "started_at", "current_tool"}
        assert info["state"] == "idle" and info["rss"] > 1 << 20 and info["started_at"] <= time.time()
    assert sum(info["requests"] for info in infos) == 4


def test_current_tool_is_visible_while_running():
    with Pool(Toolbox, size=1) as pool:
        call = threading.Thread(target=pool.execute, args=("sleep", {"seconds": 0.3}))
        call.start()
        wait_for(lambda: pool.stats()["worker_info"][0]["current_tool"] == "sleep")
        call.join()


def test_track_and_progress_callback_follow_chunk_fields(pool):
    updates = []
    chunks = list(track(pool.stream("count", {"n": 3}), step="number", progress=lambda done, total: updates.append(done)))
    assert len(chunks) == 3 and updates == [0, 1, 2]

    from snakepit.adapters.showcase import ShowcaseAdapter

    with Pool(ShowcaseAdapter, size=1) as showcase:
        seen, positions = [], []
        callback = progress_callback(seen.append, step="epoch", progress=lambda done, total: positions.append((done, total)))
        showcase.execute_stream("train", {"epochs": 3, "delay": 0}, callback)
        assert positions == [(1, 3), (2, 3), (3, 3)] and len(seen) == 4


def _drawn(err: str) -> list[str]:
    """What a tqdm bar drew on stderr, one entry per refresh."""
    return [line.strip() for line in err.replace("\n", "\r").split("\r") if line.strip()]


def test_tracks_first_bar_is_at_the_first_chunks_position(capsys):
    """The bar is drawn once the chunks say where they are, not before as an empty ``0item``."""
    pytest.importorskip("tqdm")
    chunks = [{"note": "start"}, *({"step": i, "total": 4} for i in range(1, 5))]
    assert list(track(chunks)) == chunks
    drawn = _drawn(capsys.readouterr().err)
    assert drawn and "1/4" in drawn[0] and "25%" in drawn[0], drawn
    assert "4/4" in drawn[-1] and not any("item [" in line for line in drawn), drawn
    list(track([{"note": "no positions"}]))  # nothing to show: nothing drawn
    assert capsys.readouterr().err == ""

    callback = progress_callback(step="epoch", total="epochs")
    for epoch in range(1, 4):
        callback({"epoch": epoch, "epochs": 3})
    callback({"epoch": 4, "epochs": 3})  # past the end, after the bar closed: no second bar
    drawn = _drawn(capsys.readouterr().err)
    assert "1/3" in drawn[0] and "3/3" in drawn[-1] and not any("item [" in line for line in drawn), drawn


def _logged(caplog, event: str, after: int = 0):
    """The first log record of ``event`` among those from the ``after``-th on."""
    return wait_for(lambda: next((r for r in caplog.records[after:] if getattr(r, "snakepit_event", None) == event), None))


def test_what_the_caller_also_gets_as_an_error_is_logged_at_info(caplog):
    """A timeout the caller catches is no warning: the log says it at INFO, WARNING is for what
    no caller sees. Both the log and the error name the limit."""
    caplog.set_level(logging.INFO, logger="snakepit")
    with Pool(Toolbox, size=1) as pool:
        with pytest.raises(SnakepitError) as info:
            pool.execute("sleep", {"seconds": 5}, timeout=0.2)
        assert info.value.reason == "timeout"
        assert info.value.message == "call to 'sleep' exceeded its timeout of 0.2 s" and info.value.details["timeout"] == 0.2
        record = _logged(caplog, "timeout")
        assert record.levelno == logging.INFO and record.timeout == 0.2
        assert record.getMessage() == f"call to 'sleep' on worker {record.worker_id} exceeded its timeout of 0.2 s"

        seen = len(caplog.records)
        [error] = pool.map("sleep", [{"seconds": 5}], timeout=0.25, return_exceptions=True)
        assert error.reason == "timeout" and error.message == "a batch of 'sleep' exceeded its timeout of 0.25 s"
        record = _logged(caplog, "timeout", seen)
        assert record.levelno == logging.INFO
        assert record.getMessage() == f"a batch of 'sleep' on worker {record.worker_id} exceeded its timeout of 0.25 s"


def test_waits_for_a_worker_name_their_limit_in_the_log_and_the_error(caplog):
    caplog.set_level(logging.INFO, logger="snakepit")
    # The one worker is held by an open stream (its tool sleeps) until the stream closes.
    with Pool(Toolbox, size=1, queue_timeout=0.3) as pool, pool.stream("count", {"n": 1, "delay": 60}):
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1})
        message = "call to 'add' waited 0.3 s for a worker (queue_timeout)"
        assert (info.value.reason, info.value.message, info.value.details["queue_timeout"]) == ("queue_timeout", message, 0.3)
        record = _logged(caplog, "queue_timeout")
        assert (record.levelno, record.getMessage()) == (logging.INFO, message)

        seen = len(caplog.records)
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", {"a": 1}, timeout=0.1)  # its own timeout ends the wait first
        message = "call to 'add' exceeded its timeout of 0.1 s while waiting for a worker"
        assert (info.value.reason, info.value.message, info.value.details["stage"]) == ("timeout", message, "queued")
        record = _logged(caplog, "timeout", seen)
        assert (record.levelno, record.getMessage()) == (logging.INFO, message)


def test_a_full_queue_names_its_limit_in_the_log_and_the_error(caplog):
    caplog.set_level(logging.INFO, logger="snakepit")
    with Pool(Toolbox, size=1, max_queue=1, queue_timeout=60) as pool:
        results: list = []
        with pool.stream("count", {"n": 1, "delay": 60}):  # holds the one worker until closed
            waiter = threading.Thread(target=lambda: results.append(pool.execute("add", {"a": 1})))
            waiter.start()
            wait_for(lambda: pool.stats()["waiting"] == 1)
            with pytest.raises(SnakepitError) as info:
                pool.execute("add", {"a": 2})
        waiter.join()
        assert results == [2]
    message = "pool saturated: 1 calls waiting (max_queue=1)"
    assert (info.value.reason, info.value.message, info.value.details["max_queue"]) == ("pool_saturated", message, 1)
    record = _logged(caplog, "pool_saturated")
    assert (record.levelno, record.getMessage(), record.max_queue) == (logging.INFO, message, 1)

"""The crash matrix, after loky's and CPython's: every stage of a call x every way of failing x
every API. The caller gets the documented error promptly, only that call fails, and the pool is
back to full size with nothing leaked.

Stages: encoding the arguments (owner), decoding them (worker), running the tool, encoding the
result or chunk (worker), decoding it (owner). Faults travel inside values whose own pickling
or unpickling fails (see ``helpers.Fault``), so each stage is reached through the real wire.
Process deaths (``os._exit``, SIGKILL, SIGSEGV) and ``SystemExit`` are injected at the worker's
stages only (a ``BaseException`` in the caller's own process is the caller's, and propagates).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import psutil
import pytest
from helpers import FAULT_EXIT_CODE, Fault, wait_for

from snakepit import Pool, SnakepitError

SERIALIZATION = ("validation", "serialization_error")
TOOL = ("python_error", "tool_exception")
CRASH = ("worker", "worker_crashed")
DEATHS = {"exit": {"exit_code": FAULT_EXIT_CODE}, "kill": {"signal": "SIGKILL"}, "segv": {"signal": "SIGSEGV"}}

# (stage, how) -> the error the caller sees
CASES = {
    ("encode_args", "raise"): SERIALIZATION,
    ("encode_args", "unpicklable"): SERIALIZATION,
    ("decode_args", "raise"): SERIALIZATION,
    ("decode_args", "systemexit"): SERIALIZATION,
    **{("decode_args", how): CRASH for how in DEATHS},
    ("run", "raise"): TOOL,
    ("run", "systemexit"): TOOL,
    **{("run", how): CRASH for how in DEATHS},
    ("encode_result", "raise"): SERIALIZATION,
    ("encode_result", "systemexit"): SERIALIZATION,
    ("encode_result", "unpicklable"): SERIALIZATION,
    **{("encode_result", how): CRASH for how in DEATHS},
    ("decode_result", "raise"): SERIALIZATION,
}
APIS = ["execute", "stream", "map", "aexecute"]


def _request(stage: str, how: str, streaming: bool) -> tuple[str, dict[str, Any]]:
    """The tool and arguments that carry fault ``how`` to ``stage``."""
    prefix = "stream_" if streaming else ""
    if stage == "encode_args":
        return prefix + "echo", {"value": threading.Lock() if how == "unpicklable" else Fault(how, "dump")}
    if stage == "decode_args":
        return prefix + "echo", {"value": Fault(how, "load")}
    if stage == "run":
        return prefix + "fail_by", {"how": how}
    if stage == "encode_result":
        return prefix + "produce", {"how": how, "when": "dump"}
    return prefix + "produce", {"how": how, "when": "load"}


def _call(pool: Pool, api: str, tool: str, args: dict[str, Any]) -> tuple[SnakepitError, list[Any]]:
    """Run the call through ``api``; its error and whatever it delivered before."""
    delivered: list[Any] = []
    try:
        if api == "execute":
            delivered.append(pool.execute(tool, args))
        elif api == "stream":
            for chunk in pool.stream(tool, args):
                delivered.append(chunk)
        elif api == "map":
            [outcome] = pool.map(tool, [args], return_exceptions=True)
            if isinstance(outcome, SnakepitError):
                return outcome, delivered
            delivered.append(outcome)
        else:
            delivered.append(asyncio.run(pool.aexecute(tool, args)))
    except SnakepitError as exc:
        return exc, delivered
    raise AssertionError(f"no error: delivered {delivered!r}")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _warm(pool: Pool) -> None:
    """Both workers serve a call at once: a worker that dies after serving one is no sign of a
    crash loop, so replacements start without back-off."""
    holds = [threading.Thread(target=pool.execute, args=("hold", {"seconds": 0.05})) for _ in range(2)]
    for thread in holds:
        thread.start()
    for thread in holds:
        thread.join()


@pytest.fixture(scope="module")
def matrix_pool():
    """One pool for the whole matrix: each case checks that it is back to full size with the
    owner's descriptors as before; closing it must then leave no process behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    # Dozens of deaths a minute, by design: no slot is to be quarantined for them (test_supervision
    # covers quarantine); where they fall depends on routing, which takes the warmest idle worker.
    with Pool("helpers:Matrix", size=2, start_timeout=30, quarantine_after=None) as pool:
        yield pool
    wait_for(lambda: {p.pid for p in psutil.Process().children(recursive=True)} <= before, timeout=10)


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Replaces the suite's per-test check: replacement workers of the shared pool are not
    leaks (the module fixture checks that closing the pool leaves nothing)."""
    yield


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stage, how", list(CASES))
def test_crash_matrix(matrix_pool, stage, how, api):
    pool = matrix_pool
    wait_for(lambda: pool.stats()["workers"] == 2 and pool.stats()["available"] == 2, timeout=15)
    _warm(pool)
    fds = _fds()
    restarts = pool.stats()["restarts"]
    streaming = api == "stream"
    tool, args = _request(stage, how, streaming)

    started = time.monotonic()
    error, delivered = _call(pool, api, tool, args)
    elapsed = time.monotonic() - started

    expected = CASES[stage, how]
    assert (error.category, error.reason) == expected, error
    assert elapsed < 5.0  # promptly: no timeout, no grace period was waited for
    if expected == CRASH:
        assert {key: error.details.get(key) for key in DEATHS[how]} == DEATHS[how]
    if expected == TOOL:
        assert error.details["type"] == {"raise": "RuntimeError", "systemexit": "SystemExit"}[how]
        assert "injected fault" in error.traceback
    if streaming and stage in ("run", "encode_result", "decode_result"):
        assert delivered == ["first"]  # what was yielded before the fault arrives first
    else:
        assert delivered == []

    # Only that call failed: the pool serves on both workers, at full size, nothing leaked.
    wait_for(lambda: pool.stats()["workers"] == 2 and pool.stats()["available"] == 2, timeout=15)
    assert pool.stats()["restarts"] == restarts + (expected == CRASH)
    assert pool.execute("echo", {"value": [stage, how]}) == [stage, how]
    assert sorted(pool.map("echo", [{"value": i} for i in range(4)])) == [0, 1, 2, 3]
    wait_for(lambda: _fds() == fds, timeout=10)


@pytest.mark.parametrize(
    "stage, how", [case for case, expected in CASES.items() if expected != CRASH and case[0] != "decode_result"]
)
def test_a_failing_map_item_fails_alone_in_its_batch(matrix_pool, stage, how):
    """Items travel (and are decoded) one by one when they cannot travel together: a fault in
    one item's arguments or result fails that item, not its batch. (Results that cannot be
    unpickled in the owner are the exception: they travel pickled together, and fail together.)"""
    tool, args = _request(stage, how, streaming=False)
    good = {"echo": {"value": "ok"}, "fail_by": {"how": "none"}, "produce": {"how": "none", "when": "dump"}}[tool]
    outcomes = list(matrix_pool.map(tool, [good, args, good], chunksize=3, return_exceptions=True))
    assert outcomes[0] == outcomes[2] == "ok"
    assert (outcomes[1].category, outcomes[1].reason) == CASES[stage, how]

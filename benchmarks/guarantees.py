"""The promptness promises of the failure semantics guide, measured: how long each "at once" and "at the deadline" takes.

The failure table promises that some errors come at once (``worker_busy``, ``pool_saturated``,
``pool_closed`` when ``close()`` begins, ``worker_crashed`` when a worker dies), that a timeout
ends a call at its deadline, that ``HALT`` returns without waiting for the tool, and that a dead
worker's replacement starts at once. Each is measured ``--repeats`` times on a pool of its own
and printed with its median and worst, beside the bound the suite checks (which allows at least
5x the worst seen here on a loaded machine). The slow alternative each rules out is made
seconds long (a tool sleeping 30 s, ``queue_timeout`` 10 s, ``cancel_grace`` 5 s,
``shutdown_timeout`` 10 s), so a broken promise shows as seconds, not milliseconds.

Run: ``python -m benchmarks.guarantees [--repeats R] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable

from snakepit import HALT, BaseAdapter, Pool, SnakepitError, tool

from ._harness import common_options, emit_json


class Timed(BaseAdapter):
    @tool
    def pid(self) -> int:
        return os.getpid()

    @tool
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @tool(supports_streaming=True)
    def slow(self, delay: float):
        yield 0  # the first chunk at once, then one per delay
        while True:
            time.sleep(delay)
            yield 1


# What the suite's tests allow for each (the deadline's own time excluded), in seconds.
BOUNDS = {
    "worker_busy (strict_fail_fast)": 2.0,
    "pool_saturated": 2.0,
    "timeout past its deadline": 2.0,
    "HALT returns": 2.0,
    "close() -> pool_closed": 2.0,
    "SIGKILL -> worker_crashed": 2.5,
    "SIGKILL -> replacement ready": 15.0,
}


def _running_call(pool: Pool, session_id: str | None = None) -> tuple[threading.Thread, list[float]]:
    """A call holding a worker for 30 s (ended by the pool's close), running once this returns;
    the list gets the moment it fails."""
    failed_at: list[float] = []

    def call() -> None:
        try:
            pool.execute("sleep", {"seconds": 30}, session_id=session_id)
        except SnakepitError:
            failed_at.append(time.perf_counter())

    caller = threading.Thread(target=call)
    caller.start()
    _until(lambda: pool.stats()["busy"] == 1)
    return caller, failed_at


def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark's set-up did not settle")
        time.sleep(0.002)


def _failing(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    try:
        call()
    except SnakepitError:
        return time.perf_counter() - started
    raise RuntimeError("the call did not fail")


def worker_busy() -> float:
    with Pool(Timed, size=1, queue_timeout=10, shutdown_timeout=1) as pool:
        pool.execute("pid", session_id="s")
        _running_call(pool, "s")
        return _failing(lambda: pool.execute("pid", session_id="s", affinity="strict_fail_fast"))


def pool_saturated() -> float:
    with Pool(Timed, size=1, max_queue=0, queue_timeout=10, shutdown_timeout=1) as pool:
        _running_call(pool)
        return _failing(lambda: pool.execute("pid"))


def timeout_lateness() -> float:
    with Pool(Timed, size=1, cancel_grace=5, shutdown_timeout=1) as pool:
        return _failing(lambda: pool.execute("sleep", {"seconds": 30}, timeout=0.2)) - 0.2


def halt() -> float:
    with Pool(Timed, size=1, cancel_grace=5, shutdown_timeout=1) as pool:
        halted_at: list[float] = []

        def callback(chunk: int) -> object:
            halted_at.append(time.perf_counter())
            return HALT

        pool.execute_stream("slow", {"delay": 30}, callback)
        return time.perf_counter() - halted_at[0]


def close_to_pool_closed() -> float:
    pool = Pool(Timed, size=1, shutdown_timeout=10, cancel_grace=5).start()
    caller, failed_at = _running_call(pool)
    began = time.perf_counter()
    closer = threading.Thread(target=pool.close)
    closer.start()
    caller.join(30)
    closer.join(60)
    return failed_at[0] - began


def crash() -> tuple[float, float]:
    with Pool(Timed, size=1, shutdown_timeout=1) as pool:
        worker = pool.execute("pid")
        caller, failed_at = _running_call(pool)
        killed = time.perf_counter()
        os.kill(worker, signal.SIGKILL)
        caller.join(30)
        _until(lambda: (now := pool.stats())["available"] == 1 and now["worker_info"][0]["pid"] != worker)
        return failed_at[0] - killed, time.perf_counter() - killed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    common_options(parser)
    opts = parser.parse_args(argv)
    logging.getLogger("snakepit").setLevel(logging.ERROR)  # the timeouts and kills are on purpose
    repeats = 1 if opts.quick else opts.repeats
    samples: dict[str, list[float]] = {name: [] for name in BOUNDS}
    for _ in range(repeats):
        samples["worker_busy (strict_fail_fast)"].append(worker_busy())
        samples["pool_saturated"].append(pool_saturated())
        samples["timeout past its deadline"].append(timeout_lateness())
        samples["HALT returns"].append(halt())
        samples["close() -> pool_closed"].append(close_to_pool_closed())
        error, replaced = crash()
        samples["SIGKILL -> worker_crashed"].append(error)
        samples["SIGKILL -> replacement ready"].append(replaced)
    width = max(map(len, BOUNDS))
    print(f"\nPromptness of the documented promises, {repeats} run(s) each, ms (the suite allows, in ms)")
    print(f"{'promise'.ljust(width)}  {'median':>9}  {'worst':>9}  {'tests allow':>11}  {'headroom':>9}")
    results = {}
    for name, values in samples.items():
        median, worst = statistics.median(values) * 1000, max(values) * 1000
        bound = BOUNDS[name] * 1000
        print(f"{name.ljust(width)}  {median:>9.1f}  {worst:>9.1f}  {bound:>11.0f}  {bound / max(worst, 1e-3):>8.0f}x")
        results[name] = {"median_ms": median, "worst_ms": worst, "bound_ms": bound, "samples_ms": [v * 1000 for v in values]}
    payload = {"repeats": repeats, "promises": results}
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

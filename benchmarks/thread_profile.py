"""The thread profile on an I/O-bound tool: calls/s at ``threads_per_worker`` 1, 4 and 16, two workers.

The tool waits ``--wait`` seconds (``time.sleep``: the GIL is released, as in a network call or
a GPU kernel) and returns. Callers keep ``2 * threads`` calls in flight (an asyncio client with
``aexecute``), so every thread of both workers is busy. Beside each: the ideal (every thread
always waiting, ``2 * threads / wait``), and the same number of threads in the owner's own
``ThreadPoolExecutor`` running the function directly, the ceiling of any process pool.

Run: ``python -m benchmarks.thread_profile [--calls N] [--wait S] [--repeats R] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from snakepit import BaseAdapter, Pool, tool

from ._harness import common_options, emit_json, interleaved, medians, print_table

WORKERS = 2
THREADS = (1, 4, 16)


class Waits(BaseAdapter):
    thread_safe = True

    @tool
    def wait(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def _drive(pool: Pool, calls: int, in_flight: int, wait: float) -> float:
    queue = iter(range(calls))

    async def caller() -> None:
        for _ in queue:
            await pool.aexecute("wait", {"seconds": wait})

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return calls / (time.perf_counter() - started)


def bench_pool(pool: Pool, calls: int, threads: int, wait: float) -> float:
    return asyncio.run(_drive(pool, calls, WORKERS * threads, wait))


def bench_threads(calls: int, threads: int, wait: float) -> float:
    with ThreadPoolExecutor(WORKERS * threads) as executor:
        started = time.perf_counter()
        for _ in executor.map(_sleep, [wait] * calls):
            pass
        return calls / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per contender and round (at 16 threads; fewer below)")
    parser.add_argument("--wait", type=float, default=0.005, help="seconds each call waits")
    parser.add_argument("--repeats", type=int, default=3)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.calls, opts.repeats = 200, 1
    payload: dict = {
        "benchmark": "thread_profile",
        "wait_s": opts.wait,
        "workers": WORKERS,
        "calls_per_s": {},
        "ideal_calls_per_s": {},
    }
    pools = {threads: Pool(Waits, size=WORKERS, threads_per_worker=threads).start() for threads in THREADS}
    try:
        contenders = {}
        for threads in THREADS:
            calls = max(50, opts.calls * threads // max(THREADS))
            contenders[f"snakepit, threads_per_worker={threads}"] = lambda pool=pools[threads], calls=calls, threads=threads: (
                bench_pool(pool, calls, threads, opts.wait)
            )
            contenders[f"ThreadPoolExecutor({WORKERS * threads}) in the owner"] = lambda calls=calls, threads=threads: (
                bench_threads(calls, threads, opts.wait)
            )
        samples = interleaved(opts.repeats, contenders)
    finally:
        for pool in pools.values():
            pool.close()
    results = medians(samples)
    for threads in THREADS:
        ideal = WORKERS * threads / opts.wait
        ours = results[f"snakepit, threads_per_worker={threads}"]
        payload["ideal_calls_per_s"][threads] = ideal
        rows = [
            (f"snakepit, threads_per_worker={threads}", ours),
            (
                f"ThreadPoolExecutor({WORKERS * threads}) in the owner",
                results[f"ThreadPoolExecutor({WORKERS * threads}) in the owner"],
            ),
            (f"ideal: {WORKERS * threads} threads always waiting", ideal),
        ]
        print_table(
            f"I/O-bound calls ({opts.wait * 1000:g} ms each), {WORKERS} workers x {threads} threads, median of {opts.repeats} (calls/s)",
            "calls/s",
            rows,
            reference=f"ideal: {WORKERS * threads} threads always waiting",
        )
    base = results["snakepit, threads_per_worker=1"]
    for threads in THREADS[1:]:
        print(
            f"threads_per_worker={threads}: {results[f'snakepit, threads_per_worker={threads}'] / base:.2f}x threads_per_worker=1"
        )
    payload["calls_per_s"] = results
    payload["samples"] = samples
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

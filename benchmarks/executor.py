"""snakepit.Executor vs concurrent.futures.ProcessPoolExecutor vs loky's reusable executor.

Three workloads over two workers, each contender in the same run, interleaved:

* **tiny tasks, submitted**: ``N`` futures of ``add(i, 1)`` submitted at once, then waited for
  (tasks/s): the executor's per-task cost when it is kept busy;
* **per-task round trip**: one caller, ``submit(...).result()`` in a loop (µs per task): the
  latency a caller waiting on each result pays;
* **map**: ``executor.map(add, range(N), ...)`` with ``chunksize=1`` (what ``map`` does by
  default) and ``chunksize=100`` (tasks/s);
* **start-up**: from the constructor to the first result, and the shutdown after it (s), for a
  fresh executor each time (``ProcessPoolExecutor`` with fork, the Linux default, and with spawn;
  loky's own executor, not the reusable one, which would be warm).

Run: ``python -m benchmarks.executor [--tasks N] [--repeats R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

from snakepit import Executor

from ._harness import common_options, emit_json, interleaved, medians, print_table

WORKERS = 2


def add(a: int, b: int) -> int:
    return a + b


def submitted(executor: concurrent.futures.Executor, n: int) -> float:
    start = time.perf_counter()
    futures = [executor.submit(add, i, 1) for i in range(n)]
    done, _ = concurrent.futures.wait(futures)
    elapsed = time.perf_counter() - start
    assert len(done) == n and futures[-1].result() == n
    return n / elapsed


def round_trip_us(executor: concurrent.futures.Executor, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        executor.submit(add, i, 1).result()
    return (time.perf_counter() - start) / n * 1e6


def mapped(executor: concurrent.futures.Executor, n: int, chunksize: int) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in executor.map(add, range(n), [1] * n, chunksize=chunksize))
    elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


def start_up_ms(make: Callable[[], concurrent.futures.Executor]) -> float:
    start = time.perf_counter()
    executor = make()
    executor.submit(add, 1, 1).result()
    executor.shutdown(wait=True)
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import loky

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=5)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.tasks, opts.repeats = 500, 1
    n = opts.tasks
    samples: dict[str, dict[str, list[float]]] = {}
    with (
        Executor(WORKERS) as ours,
        concurrent.futures.ProcessPoolExecutor(WORKERS) as stdlib,
    ):
        reusable = loky.get_reusable_executor(max_workers=WORKERS)
        executors: dict[str, concurrent.futures.Executor] = {
            "snakepit Executor": ours,
            "ProcessPoolExecutor": stdlib,
            "loky reusable executor": reusable,
        }
        for executor in executors.values():  # started, and warm
            assert executor.submit(add, 1, 1).result() == 2
        workloads: dict[str, tuple[str, Callable[[concurrent.futures.Executor], float]]] = {
            "submitted": ("tasks/s", lambda e: submitted(e, n)),
            "round trip": ("µs per task", lambda e: round_trip_us(e, max(n // 5, 100))),
            "map chunksize=1": ("tasks/s", lambda e: mapped(e, n, 1)),
            "map chunksize=100": ("tasks/s", lambda e: mapped(e, n * 4, 100)),
        }
        for workload, (_, run) in workloads.items():
            contenders = {name: (lambda run=run, e=e: run(e)) for name, e in executors.items()}
            samples[workload] = interleaved(opts.repeats, contenders)
        reusable.shutdown(wait=True)
    spawn = mp.get_context("spawn")
    samples["start-up"] = interleaved(
        max(opts.repeats // 2, 1),
        {
            "snakepit Executor": lambda: start_up_ms(lambda: Executor(WORKERS)),
            "ProcessPoolExecutor (fork)": lambda: start_up_ms(lambda: concurrent.futures.ProcessPoolExecutor(WORKERS)),
            "ProcessPoolExecutor (spawn)": lambda: start_up_ms(
                lambda: concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=spawn)
            ),
            "loky executor (fresh)": lambda: start_up_ms(lambda: loky.ProcessPoolExecutor(WORKERS)),
        },
    )
    results = {workload: medians(figures) for workload, figures in samples.items()}
    units = {**{w: u for w, (u, _) in workloads.items()}, "start-up": "ms"}
    for workload, figures in results.items():
        lower_is_better = units[workload] in ("ms", "µs per task")
        print_table(
            f"Executor, {workload}: {n:,} tiny tasks over {WORKERS} workers, median of {opts.repeats}"
            if workload != "start-up"
            else f"Executor start-up to the first result and shut down, {WORKERS} workers",
            units[workload],
            list(figures.items()),
            reference="snakepit Executor",
            reference_vs_each=True,
            higher_is_better=not lower_is_better,
        )
        print("range: " + "; ".join(f"{name} {min(v):,.1f}-{max(v):,.1f}" for name, v in samples[workload].items()))
    payload = {"benchmark": "executor", "tasks": n, "workers": WORKERS, "results": results, "samples": samples}
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

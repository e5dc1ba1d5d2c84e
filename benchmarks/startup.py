"""Start-up: a 16-worker pool until every worker is ready, against the cold floor; workers' memory.

* ``Pool(size=16).start()``: from the constructor until ``start()`` returns, every worker
  ready (imported, adapter initialised, tools reported), in a fresh owner process;
* ``16 bare interpreters``: 16 ``python -c "import snakepit"`` started at once, until the last
  exits: what 16 cold worker processes cost at the least, before any pool logic;
* per-worker memory of a bare adapter: unique set size (USS, ``psutil``), the memory a worker
  adds that no other process shares.

Each measurement runs in its own fresh process, so no import is warm from a previous one.

Run: ``python -m benchmarks.startup [--workers N] [--repeats R] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from ._harness import common_options, emit_json, interleaved, medians, print_table

_POOL = """
import json, statistics, sys, time
started = time.perf_counter()
from snakepit import BaseAdapter, Pool, tool

class Bare(BaseAdapter):
    @tool
    def ping(self) -> int:
        return 1

if __name__ == "__main__":
    with Pool(Bare, size={workers}) as pool:
        ready = time.perf_counter() - started
        import psutil
        uss = [psutil.Process(w["pid"]).memory_full_info().uss for w in pool.stats()["worker_info"]]
        print(json.dumps({{"seconds": ready, "uss_mb": statistics.median(uss) / 2**20}}))
"""


def pool_start(workers: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _POOL.format(workers=workers)], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_imports(workers: int) -> float:
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", "import snakepit"]) for _ in range(workers)]
    for process in processes:
        process.wait()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.workers, opts.repeats = 4, 1
    n = opts.workers
    uss: list[float] = []

    def measure_pool() -> float:
        result = pool_start(n)
        uss.append(result["uss_mb"])
        return result["seconds"]

    samples = interleaved(opts.repeats, {
        f"Pool(size={n}).start(), all ready": measure_pool,
        f"{n} bare interpreters importing snakepit": lambda: bare_imports(n),
    })
    results = medians(samples)
    print_table(
        f"Start-up of {n} workers, median of {opts.repeats} (seconds; range {min(samples[next(iter(samples))]):.2f}-"
        f"{max(samples[next(iter(samples))]):.2f} for the pool)",
        "seconds", list(results.items()), reference=f"{n} bare interpreters importing snakepit", higher_is_better=False,
    )
    ratio = results[f"Pool(size={n}).start(), all ready"] / results[f"{n} bare interpreters importing snakepit"]
    print(f"pool start-up / cold floor: {ratio:.2f}x; per-worker USS of a bare adapter: {statistics.median(uss):.1f} MB")
    payload = {"benchmark": "startup", "workers": n, "median_seconds": results, "ratio_to_floor": ratio, "worker_uss_mb": statistics.median(uss)}
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

"""Start-up: a 16-worker pool until every worker is ready, against the cold floor; workers' memory.

* ``Pool(size=16).start()``, with each start method: from the constructor until ``start()``
  returns, every worker ready (imported, adapter initialised, tools reported), in a fresh owner
  process. ``forkserver`` (the default) includes the template's own start;
* ``16 bare interpreters``: 16 ``python -c "import snakepit"`` started at once, until the last
  exits: what 16 cold worker processes cost at the least, before any pool logic;
* the same for an adapter whose module imports numpy (an ML worker's typical heavy import), whose
  floor is 16 interpreters importing snakepit and numpy;
* per-worker memory: unique set size (USS, ``psutil``), the memory a worker adds that no other
  process shares (a forked worker shares what its template imported until it writes to it).

Each measurement runs in its own fresh process, so no import is warm from a previous one.

Run: ``python -m benchmarks.startup [--workers N] [--repeats R] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time

from ._harness import common_options, emit_json, interleaved, medians, print_table

_POOL = """
import json, statistics, sys, time
from snakepit import Pool

if __name__ == "__main__":
    started = time.perf_counter()
    with Pool({adapter!r}, size={workers}, start_method={method!r}) as pool:
        ready = time.perf_counter() - started
        import psutil
        uss = [psutil.Process(w["pid"]).memory_full_info().uss for w in pool.stats()["worker_info"]]
        print(json.dumps({{"seconds": ready, "uss_mb": statistics.median(uss) / 2**20}}))
"""

_SCENARIOS = {  # adapter -> what its cold floor imports
    "benchmarks._startup_adapters:Bare": "snakepit",
    "benchmarks._startup_numpy:WithNumpy": "snakepit, numpy",
}
METHODS = ("forkserver", "spawn")


def pool_start(adapter: str, workers: int, method: str) -> dict:
    script = _POOL.format(adapter=adapter, workers=workers, method=method)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_imports(workers: int, modules: str) -> float:
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", f"import {modules}"]) for _ in range(workers)]
    for process in processes:
        process.wait()
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.workers, opts.repeats = 4, 1
    n = opts.workers
    payload: dict = {"benchmark": "startup", "workers": n, "scenarios": {}}
    for adapter, modules in _SCENARIOS.items():
        if "numpy" in modules and importlib.util.find_spec("numpy") is None:
            continue
        name = adapter.rpartition(":")[2]
        uss: dict[str, list[float]] = {method: [] for method in METHODS}

        def measure(method: str, adapter: str = adapter, uss: dict = uss) -> float:
            result = pool_start(adapter, n, method)
            uss[method].append(result["uss_mb"])
            return result["seconds"] * 1000

        floor = f"{n} bare interpreters importing {modules}"
        contenders = {f"Pool(size={n}), start_method={method!r}": (lambda m=method: measure(m)) for method in METHODS}
        contenders[floor] = lambda n=n, modules=modules: bare_imports(n, modules)
        samples = interleaved(opts.repeats, contenders)
        results = medians(samples)
        ranges = "; ".join(f"{label.split(', ')[1]} {min(v):.0f}-{max(v):.0f}" for label, v in samples.items() if label != floor)
        print_table(
            f"Start-up of {n} workers of {name}, median of {opts.repeats} (ms; ranges {ranges})",
            "ms",
            list(results.items()),
            reference=floor,
            higher_is_better=False,
        )
        scenario = {"median_ms": results, "ranges": {k: [min(v), max(v)] for k, v in samples.items()}}
        for method in METHODS:
            ratio = results[f"Pool(size={n}), start_method={method!r}"] / results[floor]
            scenario[f"{method}_ratio_to_floor"] = ratio
            scenario[f"{method}_worker_uss_mb"] = statistics.median(uss[method])
            print(f"{method}: start-up / cold floor {ratio:.2f}x, per-worker USS {statistics.median(uss[method]):.1f} MB")
        payload["scenarios"][name] = scenario
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

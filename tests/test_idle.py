"""An idle pool costs nothing: no spinning, no polling loops (the reply spin is per wait only)."""

from __future__ import annotations

import time

import psutil
from helpers import Toolbox

from snakepit import Pool


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def test_an_idle_pool_stays_under_one_percent_of_a_cpu():
    with Pool(Toolbox, size=2) as pool:
        for i in range(2000):  # arm the reply spin, whatever the placement
            pool.execute("add", {"a": i})
        processes = [psutil.Process()] + [psutil.Process(w["pid"]) for w in pool.stats()["worker_info"]]
        before, started = _cpu_seconds(processes), time.monotonic()
        time.sleep(3.0)  # the measured idle period itself
        used, elapsed = _cpu_seconds(processes) - before, time.monotonic() - started
    # CPU time, not wall time: a loaded machine does not inflate it. Measured: under 0.01%.
    assert used / elapsed < 0.01, f"idle pool used {used / elapsed:.2%} of a CPU"

"""The benchmark suite runs (quick mode, no thresholds): benchmarks that nobody runs rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_the_quick_suite_runs_every_benchmark_and_records_the_machine(tmp_path):
    out = tmp_path / "run.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads(out.read_text())
    machine = run["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"] and machine["kernel"] and "msgspec" in machine["libraries"]
    assert set(run["results"]) | set(run["skipped"]) == {
        "execute_latency",
        "stream_throughput",
        "large_values",
        "map_throughput",
        "executor",
        "startup",
        "thread_profile",
        "grpc_throughput",
        "ray_backend",
        "guarantees",
        "scaling",
    }
    latency = run["results"]["execute_latency"]["placements"]["unpinned"]
    assert latency["snakepit execute"]["p50_us"] > 0 and latency["raw os.pipe + msgpack"]["p50_us"] > 0
    assert "Round trip of a tiny call, unpinned" in done.stdout

    compared = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", str(out), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert compared.returncode == 0 and "execute_latency.placements.unpinned.snakepit execute.p50_us" in compared.stdout

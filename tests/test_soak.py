"""The soak (``python -m benchmarks soak``), 20 seconds of it: every kind of call at once, in-process
and over gRPC, while workers are SIGKILLed at random. Run in a subprocess of its own, so that what
it measures of its process (fds, threads, children) is the soak's alone.

The soak's killer signals only workers of its own two pools: pids from their ``stats()``, held by
a pidfd and checked to be the soak's descendants named ``snakepit-worker`` before the SIGKILL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 20
AT_LEAST_PER_KIND = 200  # calls of every kind in 20 s (several times that on an idle 2-CPU machine)
AT_LEAST_KILLS = 3  # one every 1.5-4 s: about 7 expected


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_20_second_soak_neither_hangs_nor_errs_nor_leaks(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "soak", "--seconds", str(SECONDS), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = done.stdout[-6000:] + done.stderr[-6000:]
    assert out.exists(), output
    soak = json.loads(out.read_text())["results"]["soak"]

    # The load really ran: every kind of call, and workers killed under it.
    assert soak["ran_s"] >= SECONDS, output
    for kind, calls in soak["calls_by_kind"].items():
        assert calls >= AT_LEAST_PER_KIND, f"only {calls} calls of {kind}\n{output}"
    assert soak["map_items"].get("ok", 0) >= 100 * AT_LEAST_PER_KIND, output
    assert soak["kills"] >= AT_LEAST_KILLS, output
    assert soak["outcomes"].get("ok", 0) > 0.8 * soak["calls"], output  # the rest: mostly left early or cancelled on purpose

    # Nothing hangs, nothing is wrong, every failure is a SnakepitError.
    assert soak["hangs"] == 0, json.dumps(soak["hang_reports"], indent=1) + output
    assert soak["stuck_threads"] == [] and soak["stuck_after_close"] == [], output
    assert soak["wrong_results"] == 0, json.dumps(soak["wrong_examples"], indent=1) + output
    assert soak["foreign_exceptions"] == 0, json.dumps(soak["foreign_examples"], indent=1) + output

    # close() gives back everything the pools, servers and clients took, without the collector.
    baseline, after = soak["resources"]["baseline"], soak["resources"]["after_close"]
    for key in ("fds", "threads", "native_threads", "processes"):
        assert after[key] == baseline[key], (
            f"{key}: {after[key]} after close, {baseline[key]} at the baseline; fds left: {soak['leaked_fds']}, "
            f"threads left: {soak['extra_threads']}, processes left: {soak['children_after_close']}\n{output}"
        )
    assert soak["passed"] and done.returncode == 0, output

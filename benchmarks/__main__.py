"""Run every benchmark (or the named ones), side by side with the peers, one table per workload.

``python -m benchmarks [NAME ...] [--quick] [--json PATH]``; ``make bench`` runs them all.
Opt-in benchmarks (``soak``: minutes of mixed load with workers killed at random) run only when
named; options the suite does not know go to the benchmarks named
(``python -m benchmarks soak --minutes 10``).
``--quick`` runs each with small sizes and one repeat (under a minute in all: CI runs it, without
thresholds, so that the benchmarks cannot rot). ``--json`` writes every result and the machine's
facts (CPU count and model, kernel, Python and library versions); ``python -m benchmarks.compare
OLD.json NEW.json`` prints how the figures moved between two such files.

Ray's benchmark runs when Ray is installed (``pip install 'snakepit-pool[ray]'``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence

from ._harness import machine_facts

BENCHMARKS = [
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
]
OPT_IN = ["soak"]  # run only when named: not part of a plain `python -m benchmarks`
_NEEDS = {"ray_backend": "ray", "executor": "loky"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"which to run (default: all of {', '.join(BENCHMARKS)}); also, only when named: {', '.join(OPT_IN)}",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: checks that everything runs")
    parser.add_argument("--json", help="write every result, with the machine's facts, to this file")
    opts, extra = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    unknown = [n for n in opts.names if n not in BENCHMARKS + OPT_IN]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS + OPT_IN)}")
    if extra and not opts.names:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (options of a benchmark need its name)")
    facts = machine_facts()
    print(f"machine: {facts['cpus_usable']} CPUs ({facts['cpu_model']}), {facts['kernel']}, Python {facts['python']}")
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for name in opts.names or BENCHMARKS:
        needed = _NEEDS.get(name)
        if needed and importlib.util.find_spec(needed) is None:
            skipped[name] = f"{needed} is not installed"
            print(f"\n{name}: skipped ({skipped[name]})")
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        results[name] = module.main((["--quick"] if opts.quick else []) + extra)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": facts, "quick": opts.quick, "results": results, "skipped": skipped}, f, indent=2)
        print(f"\nresults written to {opts.json}")
    # Benchmarks only measure; a soak also judges (no hang, nothing leaked...): its verdict is the exit code.
    return 1 if any(result.get("passed") is False for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The Ray backend against plain Ray and the process backend, side by side in one run.

* round trip of a tiny call: ``pool.execute`` on each backend, and a plain Ray actor method
  (``ray.get(actor.add.remote(...))``);
* stream of small chunks: ``pool.stream`` on each backend, and a plain Ray actor streaming
  generator yielding one object per chunk (``num_returns="streaming"``);
* map of tiny tasks: ``pool.map`` on each backend (2 workers), and ``ray.util.ActorPool.map``
  over 2 plain actors.

Target: the Ray backend at >= 0.8x plain Ray's calls/s and chunks/s. One local Ray instance
(``num_cpus=2``), started here.

Run: ``python -m benchmarks.ray_backend [--calls N] [--chunks N] [--tasks N] [--repeats R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from snakepit import BaseAdapter, Pool, tool

from ._harness import common_options, emit_json, interleaved, medians, print_table


class Tiny(BaseAdapter):
    @tool
    def add(self, a: int, b: int = 1) -> int:
        return a + b

    @tool
    def numbers(self, n: int):
        for i in range(n):
            yield {"number": i}


class PlainActor:
    def add(self, a: int, b: int = 1) -> int:
        return a + b

    def numbers(self, n: int):
        for i in range(n):
            yield {"number": i}


def _p50_us(call: Any, calls: int) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def _rate(count: int, run: Any) -> float:
    started = time.perf_counter()
    assert run() == count
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=5_000)
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.calls, opts.chunks, opts.tasks, opts.repeats = 50, 1_000, 500, 1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.util import ActorPool

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        remote = ray.remote(num_cpus=0.25)(PlainActor)
        plain = [remote.remote() for _ in range(2)]
        ray.get([actor.add.remote(1) for actor in plain])
        gen_method = plain[0].numbers.options(num_returns="streaming")
        actors = ActorPool(plain)
        n, calls, tasks = opts.chunks, opts.calls, opts.tasks
        with Pool(Tiny, size=2, backend="ray", actor_options={"num_cpus": 0.25}) as on_ray, Pool(Tiny, size=2) as local:
            round_trips = interleaved(
                opts.repeats,
                {
                    "process backend execute": lambda: _p50_us(lambda: local.execute("add", {"a": 1}), calls),
                    "ray backend execute": lambda: _p50_us(lambda: on_ray.execute("add", {"a": 1}), calls),
                    "plain ray actor call": lambda: _p50_us(lambda: ray.get(plain[0].add.remote(1)), calls),
                },
            )
            streams = interleaved(
                opts.repeats,
                {
                    "process backend stream()": lambda: _rate(n, lambda: sum(1 for _ in local.stream("numbers", {"n": n}))),
                    "ray backend stream()": lambda: _rate(n, lambda: sum(1 for _ in on_ray.stream("numbers", {"n": n}))),
                    "plain ray streaming generator": lambda: _rate(
                        n, lambda: sum(1 for ref in gen_method.remote(n) if ray.get(ref) is not None)
                    ),
                },
            )
            maps = interleaved(
                opts.repeats,
                {
                    "process backend map": lambda: _rate(
                        tasks, lambda: len(list(local.map("add", ({"a": i} for i in range(tasks)))))
                    ),
                    "ray backend map": lambda: _rate(
                        tasks, lambda: len(list(on_ray.map("add", ({"a": i} for i in range(tasks)))))
                    ),
                    "plain ray ActorPool.map": lambda: _rate(
                        tasks, lambda: len(list(actors.map(lambda a, i: a.add.remote(i), range(tasks))))
                    ),
                },
            )
    finally:
        ray.shutdown()
    trip, stream, mapped = medians(round_trips), medians(streams), medians(maps)
    print_table(
        f"Round trip of a tiny call, {calls} calls a round, median of {opts.repeats} round p50s",
        "p50 us",
        list(trip.items()),
        reference="plain ray actor call",
        higher_is_better=False,
    )
    print_table(
        f"Stream of {n:,} small chunks, median of {opts.repeats}",
        "chunks/s",
        list(stream.items()),
        reference="plain ray streaming generator",
    )
    print_table(
        f"Map of {tasks:,} tiny tasks over 2 workers, median of {opts.repeats}",
        "tasks/s",
        list(mapped.items()),
        reference="plain ray ActorPool.map",
    )
    payload = {
        "benchmark": "ray_backend",
        "round_trip_p50_us": trip,
        "stream_chunks_per_s": stream,
        "map_tasks_per_s": mapped,
        "samples": {**round_trips, **streams, **maps},
    }
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

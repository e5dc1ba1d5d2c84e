"""Large numpy arrays between processes: snakepit vs multiprocessing.Pipe, against one in-process copy.

Three workloads, each moving the same bytes with every contender:

* ``stream``: 1 GiB of float64 arrays of 8 MiB each, produced in a worker and consumed in the
  owner (``pool.stream`` of a generator tool; a ``Pipe`` child ``send``-ing each array);
* ``return``: one 1 GiB array returned whole by a call (``pool.execute``; a ``Pipe`` child
  answering a request with it);
* ``argument``: a 256 MiB array passed to a tool, which answers with its size;
* ``allocated``: an array the tool allocates with ``snakepit.shared.empty`` and fills, returned
  by reference (no byte copied), at 1 GiB and smaller sizes: warm (the segment reused, its
  mapping kept by the owner) and cold (after a pause: fresh memory, mapped afresh), against
  today's one-copy path (the tool returns a filled array of its own) and one in-process
  ``numpy.copyto`` of the same bytes. The clock starts when the tool has filled the array (its
  ``time.perf_counter()``: CLOCK_MONOTONIC, one clock for every process) and stops when the owner
  holds the array, on a mapping whose pages are present. Measured per placement of owner and
  worker on the CPUs (one core, two cores); the summary gives the worst.

The arrays exist before the clock starts (a tool's own work is not the transport's), and the clock
stops when the consumer holds the last array. Each timed transfer follows an untimed one: the
rate of a burst, in which snakepit reuses its shared segments (``--cold`` also times the first
transfer after a pause, which pays for fresh memory). The reference is one in-process ``numpy.copyto``
of the same bytes: snakepit moves a large buffer with one copy (into a shared memory segment the
receiver maps), so a fraction of that copy's rate is its ceiling.

Run: ``python -m benchmarks.large_values [--gib G] [--repeats R] [--cold] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import numpy as np

from snakepit import BaseAdapter, Pool, shared, tool

from ._harness import common_options, emit_json, interleaved, medians, pin, placements, print_table

CHUNK = 8 << 20
ARGUMENT = 256 << 20


class Arrays(BaseAdapter):
    def __init__(self, total: int) -> None:
        self.chunk = np.ones(CHUNK // 8)
        self.whole = np.ones(total // 8)

    @tool
    def chunks(self, count: int):
        for _ in range(count):
            yield self.chunk

    @tool
    def whole_array(self):
        return self.whole

    @tool
    def nbytes(self, x) -> int:
        return x.nbytes

    @tool
    def allocated(self, nbytes: int):
        array = shared.empty(nbytes, dtype="u1")
        array.fill(1)
        return time.perf_counter(), array

    @tool
    def own_array(self, nbytes: int):
        array = self.whole.view("u1")[:nbytes]  # filled already, in the tool's own memory
        return time.perf_counter(), array

    @tool
    def pid(self) -> int:
        return os.getpid()


def _pipe_child(conn, total: int) -> None:
    chunk, whole = np.ones(CHUNK // 8), np.ones(total // 8)
    while True:
        request = conn.recv()
        if request is None:
            return
        kind, value = request
        if kind == "chunks":
            for _ in range(value):
                conn.send(chunk)
        elif kind == "whole":
            conn.send(whole)
        else:
            conn.send(value.nbytes)


def _gbps(nbytes: int, run) -> float:
    """The rate of a transfer in a burst: one untimed transfer first, then the timed one. (A
    sender keeps its shared segments for reuse while a burst lasts and releases them after a
    second unused; the first transfer after a pause pays for fresh memory: see ``--cold``.)"""
    run()
    start = time.perf_counter()
    run()
    return nbytes / (time.perf_counter() - start) / 1e9


def _cold_gbps(nbytes: int, run) -> float:
    """The rate of a transfer after two idle seconds: fresh memory on both sides."""
    time.sleep(2.5)
    start = time.perf_counter()
    run()
    return nbytes / (time.perf_counter() - start) / 1e9


def _delivered_gbps(pool: Pool, tool_name: str, nbytes: int, cold: bool = False) -> float:
    """The rate of one array returned, from the moment the tool has filled it to the moment the
    owner holds it. Warm: right after the same call (whose result is dropped first); cold: after
    idle seconds, when sender and receiver have released their segments and mappings."""
    if cold:
        time.sleep(2.5)
    else:
        pool.execute(tool_name, {"nbytes": nbytes})
    filled, array = pool.execute(tool_name, {"nbytes": nbytes})
    elapsed = time.perf_counter() - filled
    assert array.nbytes == nbytes
    return nbytes / elapsed / 1e9


def _allocated(pool: Pool, sizes: list[int], repeats: int, quick: bool) -> dict[str, dict[str, dict[str, float]]]:
    """The ``allocated`` workload, per placement and size: median GB/s of each contender."""
    worker = pool.execute("pid")
    src, dst = np.ones(max(sizes), dtype="u1"), np.ones(max(sizes), dtype="u1")
    chosen = placements()
    if quick:
        chosen = {"unpinned": chosen["unpinned"]}
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for placement, (owner_cpus, worker_cpus) in chosen.items():
            pin([worker], owner_cpus, worker_cpus)
            for nbytes in sizes:
                measured = {
                    "shared.empty, returned (warm)": lambda n=nbytes: _delivered_gbps(pool, "allocated", n),
                    "shared.empty, returned (cold)": lambda n=nbytes: _delivered_gbps(pool, "allocated", n, cold=True),
                    "own array, returned (one copy)": lambda n=nbytes: _delivered_gbps(pool, "own_array", n),
                    "numpy.copyto in process": lambda n=nbytes: _gbps(n, lambda: np.copyto(dst[:n], src[:n])),
                }
                samples = interleaved(repeats, measured)
                results.setdefault(placement, {})[_size(nbytes)] = {
                    name: statistics.median(values) for name, values in samples.items()
                } | {f"{name} (min)": min(values) for name, values in samples.items()}
    finally:
        pin([worker], None, None)
    return results


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.3g} GiB" if nbytes >= 1 << 30 else f"{nbytes >> 20} MiB"


def _print_allocated(results: dict[str, dict[str, dict[str, float]]], repeats: int) -> dict[str, dict[str, float]]:
    """A table per placement and size; then, per size, the worst placement's ratios to copyto."""
    worst: dict[str, dict[str, float]] = {}
    for placement, by_size in results.items():
        for size, rows in by_size.items():
            medians_only = [(name, value) for name, value in rows.items() if not name.endswith("(min)")]
            title = f"an array of {size} returned, {placement}, median of {repeats} (GB/s from filled to held)"
            print_table(title, "GB/s", medians_only, reference="numpy.copyto in process")
            copy = rows["numpy.copyto in process"]
            for name, value in medians_only:
                ratio = value / copy
                previous = worst.setdefault(size, {}).get(name)
                worst[size][name] = ratio if previous is None else min(previous, ratio)
    print("\nshared.empty returned vs one in-process copy, worst placement:")
    for size, ratios in worst.items():
        cells = ", ".join(f"{name}: {ratio:.2f}x" for name, ratio in ratios.items() if name != "numpy.copyto in process")
        print(f"  {size}: {cells}")
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per stream and per returned array")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also time snakepit's first transfer after a pause")
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.gib, opts.repeats = 0.125, 1
    total = int(opts.gib * (1 << 30)) // CHUNK * CHUNK
    count = total // CHUNK
    argument = np.ones(min(ARGUMENT, total) // 8)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pipe_child, args=(child, total), daemon=True)
    proc.start()

    def pipe_stream() -> None:
        parent.send(("chunks", count))
        for _ in range(count):
            parent.recv()

    def pipe_whole() -> None:
        parent.send(("whole", None))
        parent.recv()

    def pipe_argument() -> None:
        parent.send(("argument", argument))
        assert parent.recv() == argument.nbytes

    src, dst = np.ones(total // 8), np.empty(total // 8)
    results: dict[str, dict[str, float]] = {}
    try:
        with Pool(Arrays, size=1, adapter_args={"total": total}) as pool:

            def snakepit_stream() -> None:
                received = sum(1 for _ in pool.stream("chunks", {"count": count}))
                assert received == count

            contenders = {
                "stream": (
                    total,
                    {
                        "snakepit stream()": snakepit_stream,
                        "multiprocessing.Pipe": pipe_stream,
                    },
                ),
                "return": (
                    total,
                    {
                        "snakepit execute": lambda: pool.execute("whole_array"),
                        "multiprocessing.Pipe": pipe_whole,
                    },
                ),
                "argument": (
                    argument.nbytes,
                    {
                        "snakepit execute": lambda: pool.execute("nbytes", {"x": argument}),
                        "multiprocessing.Pipe": pipe_argument,
                    },
                ),
            }
            for workload, (nbytes, runs) in contenders.items():
                measured = {name: (lambda run=run, nbytes=nbytes: _gbps(nbytes, run)) for name, run in runs.items()}
                if opts.cold:
                    first = next(iter(runs))
                    measured[f"{first}, after a pause"] = lambda run=runs[first], nbytes=nbytes: _cold_gbps(nbytes, run)
                measured["numpy.copyto in process"] = lambda nbytes=nbytes: _gbps(
                    nbytes, lambda: np.copyto(dst[: nbytes // 8], src[: nbytes // 8])
                )
                for run in runs.values():
                    run()  # warm up: workers, page tables
                results[workload] = medians(interleaved(opts.repeats, measured))
            sizes = [8 << 20, total] if opts.quick else [8 << 20, 64 << 20, 256 << 20, total]
            allocated = _allocated(pool, sizes, opts.repeats, opts.quick)
    finally:
        parent.send(None)
        proc.join(10)

    titles = {
        "stream": f"{total / (1 << 30):.3g} GiB streamed as {count} float64 arrays of 8 MiB",
        "return": f"one {total / (1 << 30):.3g} GiB float64 array returned whole",
        "argument": f"a {argument.nbytes >> 20} MiB float64 array passed as an argument",
    }
    for workload, rows in results.items():
        print_table(f"{titles[workload]}, median of {opts.repeats}", "GB/s", list(rows.items()), reference="multiprocessing.Pipe")
        copy = rows["numpy.copyto in process"]
        ours = next(v for k, v in rows.items() if k.startswith("snakepit"))
        print(f"snakepit vs one in-process copy: {ours / copy:.2f}x")
    worst = _print_allocated(allocated, opts.repeats)
    payload = {
        "benchmark": "large_values",
        "bytes": total,
        "median_gb_per_s": results,
        "allocated_gb_per_s": allocated,
        "allocated_worst_vs_copyto": worst,
    }
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

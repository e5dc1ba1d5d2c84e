"""Many tiny tasks: pool.map vs ProcessPoolExecutor.map vs multiprocessing.Pool.imap, and astream.

Part 1 maps 50,000 tiny tasks (``add(a, b)``) over two workers with each contender:

* ``snakepit map``: ``pool.map("add", ...)``, batches sized automatically, per-item errors kept;
* ``ProcessPoolExecutor.map`` with ``chunksize=1`` and with its best chunksize from a sweep;
* ``multiprocessing.Pool.imap`` with ``chunksize=1`` and with its best chunksize.

Each contender gets its natural input, built before the clock starts: argument dicts for
snakepit, two lists for ``ProcessPoolExecutor.map``, a list of pairs for ``imap``. Building
dicts costs more than the ranges the executor zips, and that is the caller's code, not the
pool's. The row ``snakepit map, args from a generator`` shows the end-to-end figure with the
dicts built lazily inside the timed loop.

Part 2 compares concurrent ``astream`` throughput (4 streams on one event loop) with the sync
``stream()`` throughput of the same pool.

Run: ``python -m benchmarks.map_throughput [--tasks N] [--repeats R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor

from snakepit import BaseAdapter, Pool, tool

from ._harness import common_options, emit_json, interleaved, medians, print_table

CHUNKSIZES = (10, 100, 1000, 5000)


class Tiny(BaseAdapter):
    @tool
    def add(self, a: int, b: int) -> int:
        return a + b

    @tool
    def numbers(self, n: int):
        last = n - 1
        for i in range(n):
            yield {"number": i, "is_last": i == last}


def add(a: int, b: int) -> int:
    return a + b


def _timed(run, n: int) -> float:
    start = time.perf_counter()
    count = run()
    elapsed = time.perf_counter() - start
    assert count == n, count
    return n / elapsed


def bench_map(pool: Pool, items: list[dict[str, int]]) -> float:
    return _timed(lambda: sum(1 for _ in pool.map("add", items)), len(items))


def bench_map_generated(pool: Pool, n: int) -> float:
    return _timed(lambda: sum(1 for _ in pool.map("add", ({"a": i, "b": 1} for i in range(n)))), n)


def bench_executor(executor: ProcessPoolExecutor, columns: tuple[list[int], list[int]], chunksize: int) -> float:
    return _timed(lambda: sum(1 for _ in executor.map(add, *columns, chunksize=chunksize)), len(columns[0]))


def bench_mp_pool(mp_pool, pairs: list[tuple[int, int]], chunksize: int) -> float:
    return _timed(lambda: sum(1 for _ in mp_pool.imap(_add_pair, pairs, chunksize=chunksize)), len(pairs))


def _add_pair(pair: tuple[int, int]) -> int:
    return pair[0] + pair[1]


def bench_sync_stream(pool: Pool, n: int) -> float:
    return _timed(lambda: sum(1 for _ in pool.stream("numbers", {"n": n})), n)


def bench_astreams(pool: Pool, n: int, streams: int = 4) -> float:
    async def consume(count: int) -> int:
        seen = 0
        async for _ in pool.astream("numbers", {"n": count}):
            seen += 1
        return seen

    async def run_all() -> int:
        return sum(await asyncio.gather(*(consume(n // streams) for _ in range(streams))))

    return _timed(lambda: asyncio.run(run_all()), n // streams * streams)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--chunks", type=int, default=200_000, help="chunks for the astream comparison")
    parser.add_argument("--repeats", type=int, default=5)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.tasks, opts.chunks, opts.repeats = 5_000, 20_000, 1
    n = opts.tasks
    ctx = mp.get_context("spawn")
    items = [{"a": i, "b": 1} for i in range(n)]
    columns = (list(range(n)), [1] * n)
    pairs = [(i, 1) for i in range(n)]
    with Pool(Tiny, size=2) as pool, ProcessPoolExecutor(2, mp_context=ctx) as executor, ctx.Pool(2) as mp_pool:
        executor.submit(add, 1, 1).result()
        contenders = {
            "snakepit map": lambda: bench_map(pool, items),
            "snakepit map, args from a generator": lambda: bench_map_generated(pool, n),
            "ProcessPoolExecutor.map chunksize=1": lambda: bench_executor(executor, columns, 1),
            "multiprocessing.Pool.imap chunksize=1": lambda: bench_mp_pool(mp_pool, pairs, 1),
        }
        for size in CHUNKSIZES:
            contenders[f"ProcessPoolExecutor.map chunksize={size}"] = lambda size=size: bench_executor(executor, columns, size)
            contenders[f"multiprocessing.Pool.imap chunksize={size}"] = lambda size=size: bench_mp_pool(mp_pool, pairs, size)
        map_results = medians(interleaved(opts.repeats, contenders))
    best_executor = max(
        (k for k in map_results if k.startswith("ProcessPoolExecutor") and not k.endswith("=1")), key=map_results.get
    )
    best_imap = max((k for k in map_results if k.startswith("multiprocessing") and not k.endswith("=1")), key=map_results.get)
    rows = [
        ("snakepit map", map_results["snakepit map"]),
        ("snakepit map, args from a generator", map_results["snakepit map, args from a generator"]),
        ("ProcessPoolExecutor.map chunksize=1", map_results["ProcessPoolExecutor.map chunksize=1"]),
        (f"{best_executor} (best)", map_results[best_executor]),
        ("multiprocessing.Pool.imap chunksize=1", map_results["multiprocessing.Pool.imap chunksize=1"]),
        (f"{best_imap} (best)", map_results[best_imap]),
    ]
    print_table(
        f"{n:,} tiny tasks over 2 workers, median of {opts.repeats}",
        "tasks/s",
        rows,
        reference="snakepit map",
        reference_vs_each=True,
    )

    with Pool(Tiny, size=4) as pool:
        stream_results = medians(
            interleaved(
                opts.repeats,
                {
                    "sync stream(), one stream": lambda: bench_sync_stream(pool, opts.chunks),
                    "astream, 4 concurrent on one loop": lambda: bench_astreams(pool, opts.chunks),
                },
            )
        )
    print_table(
        f"Stream throughput, {opts.chunks:,} chunks in total, median of {opts.repeats}",
        "chunks/s",
        list(stream_results.items()),
        reference="sync stream(), one stream",
    )
    payload = {"benchmark": "map_throughput", "tasks": n, "map_tasks_per_s": map_results, "streams_chunks_per_s": stream_results}
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

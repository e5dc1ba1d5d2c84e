"""Stream throughput of small dict chunks: snakepit vs multiprocessing.Pipe vs a raw os.pipe.

Every contender moves the same chunks, ``{"number": i, "is_last": i == n - 1}``, from a child
process to the parent, one message per chunk, and the parent looks at each one:

* ``snakepit execute_stream``: a size-1 pool streaming a generator tool into a callback;
* ``snakepit stream()``: the same, through the iterator API;
* ``multiprocessing.Pipe``: a spawned process that ``send``s each chunk, the parent ``recv``s;
* ``raw os.pipe + msgpack``: a child writing one length-prefixed msgspec frame per chunk with
  ``os.write``, the parent reading large blocks and decoding frames -- the practical ceiling.

Run: ``python -m benchmarks.stream_throughput [--chunks N] [--repeats R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import struct
import subprocess
import sys
import threading
import time

import msgspec

from snakepit import BaseAdapter, Pool, tool

from ._harness import common_options, emit_json, interleaved, medians, print_table


class Numbers(BaseAdapter):
    @tool(description="n small dict chunks")
    def numbers(self, n: int):
        last = n - 1
        for i in range(n):
            yield {"number": i, "is_last": i == last}


def _mp_sender(conn, n: int) -> None:
    last = n - 1
    for i in range(n):
        conn.send({"number": i, "is_last": i == last})
    conn.close()


def bench_mp_pipe(n: int) -> float:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mp_sender, args=(child, n))
    proc.start()
    child.close()
    parent.poll(30)  # wait for the first chunk so start-up is not timed
    start = time.perf_counter()
    count = 0
    while True:
        chunk = parent.recv()
        count += 1
        if chunk["is_last"]:
            break
    elapsed = time.perf_counter() - start
    proc.join()
    assert count == n
    return n / elapsed


_RAW_CHILD = """
import os, struct, sys, msgspec
n = int(sys.argv[1]); fd = int(sys.argv[2])
enc = msgspec.msgpack.Encoder(); pack = struct.Struct("<I").pack
last = n - 1
for i in range(n):
    payload = enc.encode({"number": i, "is_last": i == last})
    os.write(fd, pack(len(payload)) + payload)
"""


def bench_raw_pipe(n: int) -> float:
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _RAW_CHILD, str(n), str(w)], pass_fds=(w,))
    os.close(w)
    decode = msgspec.msgpack.Decoder().decode
    unpack = struct.Struct("<I").unpack_from
    rest = b""
    count = 0
    first = os.read(r, 1 << 16)  # start timing once the child is producing
    start = time.perf_counter()
    data = first
    done = False
    while not done:
        if rest:
            data = rest + data
        view = memoryview(data)
        pos, end = 0, len(data)
        while end - pos >= 4:
            size = unpack(data, pos)[0]
            if pos + 4 + size > end:
                break
            chunk = decode(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
            count += 1
            if chunk["is_last"]:
                done = True
        rest = data[pos:]
        if not done:
            data = os.read(r, 1 << 16)
            if not data:
                break
    elapsed = time.perf_counter() - start
    os.close(r)
    proc.wait()
    assert count == n, count
    return n / elapsed


def bench_snakepit_callback(pool: Pool, n: int) -> float:
    seen = []
    append = seen.append
    pool.execute("numbers", {"n": 10})  # warm
    start = time.perf_counter()
    result = pool.execute_stream("numbers", {"n": n}, lambda chunk: append(chunk["is_last"]))
    elapsed = time.perf_counter() - start
    assert result.chunks == n and seen[-1] is True
    return n / elapsed


def bench_snakepit_iterator(pool: Pool, n: int) -> float:
    count = 0
    start = time.perf_counter()
    for chunk in pool.stream("numbers", {"n": n}):
        count += 1
        last = chunk["is_last"]
    elapsed = time.perf_counter() - start
    assert count == n and last
    return n / elapsed


def bench_concurrent_streams(pool: Pool, n: int, streams: int) -> float:
    """Aggregate rate of ``streams`` streams consumed at once, each in a thread of its own."""
    barrier = threading.Barrier(streams + 1)

    def consume() -> None:
        barrier.wait()
        assert sum(1 for _ in pool.stream("numbers", {"n": n})) == n

    threads = [threading.Thread(target=consume) for _ in range(streams)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return streams * n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.chunks, opts.repeats = 20_000, 1
    n = opts.chunks
    with Pool(Numbers, size=1) as pool:
        samples = interleaved(
            opts.repeats,
            {
                "snakepit execute_stream": lambda: bench_snakepit_callback(pool, n),
                "snakepit stream()": lambda: bench_snakepit_iterator(pool, n),
                "multiprocessing.Pipe": lambda: bench_mp_pipe(n),
                "raw os.pipe + msgpack": lambda: bench_raw_pipe(n),
            },
        )
    results = medians(samples)
    print_table(
        f"Stream throughput, {n:,} small dict chunks, median of {opts.repeats}",
        "chunks/s",
        list(results.items()),
        reference="multiprocessing.Pipe",
    )
    ratios = [a / b for a, b in zip(samples["snakepit stream()"], samples["multiprocessing.Pipe"])]
    print(f"snakepit stream() vs Pipe per run: {min(ratios):.2f}x-{max(ratios):.2f}x")
    with Pool(Numbers, size=2) as pool:
        concurrent = medians(
            interleaved(
                opts.repeats,
                {
                    "one stream": lambda: bench_concurrent_streams(pool, n, 1),
                    "2 concurrent streams, 2 workers": lambda: bench_concurrent_streams(pool, n, 2),
                },
            )
        )
    print_table(
        f"Concurrent streams, {n:,} chunks each, aggregate, median of {opts.repeats}",
        "chunks/s",
        list(concurrent.items()),
        reference="one stream",
    )
    payload = {
        "benchmark": "stream_throughput",
        "chunks": n,
        "median_chunks_per_s": results,
        "samples": samples,
        "stream_vs_pipe_per_run": ratios,
        "concurrent_chunks_per_s": concurrent,
    }
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

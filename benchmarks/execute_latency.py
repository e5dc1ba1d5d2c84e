"""Round trip of a tiny call, in each placement of owner and worker: snakepit vs ProcessPoolExecutor
vs a raw pipe.

Each contender makes the same tiny call (``add(a, b)``) one at a time from one thread, and we
record every round trip:

* ``snakepit execute``: ``pool.execute("add", {...})`` on a one-worker pool;
* ``snakepit execute, session``: the same with ``session_id=`` (session lookup, pin, affinity);
* ``ProcessPoolExecutor``: ``executor.submit(add, a, b).result()`` with one worker;
* ``raw os.pipe + msgpack``: a child echoing length-prefixed msgspec frames (the ceiling).

Where the scheduler puts the worker changes a round trip severalfold: on the owner's core, the
two processes take turns on it (and evict each other's caches); on another core, each message
costs a cross-core wake-up. So every contender is measured in three placements, pinned with
``os.sched_setaffinity``: ``unpinned`` (the scheduler decides), ``same core`` (owner and
workers on one core) and ``other core`` (owner on one, workers on another). Contenders take
turns every ``--calls`` calls, for ``--rounds`` rounds, so the noise of a shared machine hits
them alike; tables show p50 and p99 over all rounds.

It also measures the routing cost of a session directly: checkout and check-in with a session
minus without, in-process, as a share of snakepit's p50 round trip.

Run: ``python -m benchmarks.execute_latency [--calls N] [--rounds R] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time
from concurrent.futures import ProcessPoolExecutor

import msgspec

from snakepit import BaseAdapter, Pool, tool

from ._harness import common_options, emit_json, pin, piped_child, placements


class Adder(BaseAdapter):
    @tool
    def add(self, a: int, b: int) -> int:
        return a + b


def add(a: int, b: int) -> int:
    return a + b


_ECHO_CHILD = """
import os, struct, sys, msgspec
r, w = int(sys.argv[1]), int(sys.argv[2])
dec = msgspec.msgpack.Decoder(); enc = msgspec.msgpack.Encoder(); H = struct.Struct("<I")
while True:
    head = os.read(r, 4)
    if not head:
        break
    body = os.read(r, H.unpack(head)[0])
    msg = dec.decode(body)
    out = enc.encode({"id": msg["id"], "result": msg["args"]["a"] + msg["args"]["b"]})
    os.write(w, H.pack(len(out)) + out)
"""


class RawEcho:
    def __init__(self) -> None:
        self.proc, self.to_child, self.from_child = piped_child(_ECHO_CHILD)
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder()
        self.header = struct.Struct("<I")

    def call(self, i: int) -> int:
        body = self.enc.encode({"id": i, "tool": "add", "args": {"a": i, "b": 1}})
        os.write(self.to_child, self.header.pack(len(body)) + body)
        size = self.header.unpack(os.read(self.from_child, 4))[0]
        return self.dec.decode(os.read(self.from_child, size))["result"]

    def close(self) -> None:
        os.close(self.to_child)
        self.proc.wait()
        os.close(self.from_child)


def _timed(call, n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start)
    return samples


def _routing_overhead(pool: Pool, n: int) -> float:
    """Seconds a session adds to checkout + check-in, measured in-process (no I/O)."""
    dispatcher = pool._dispatcher
    far = time.monotonic() + 3600

    def cycle(session_id):
        handle = dispatcher.checkout(session_id, None, far, far)
        dispatcher.release(handle)

    def per_call(session_id) -> float:
        start = time.perf_counter()
        for _ in range(n):
            cycle(session_id)
        return (time.perf_counter() - start) / n

    # Alternate the two, and take the median of the paired differences: this VM's speed drifts
    # within a run, and measuring one after the other would measure the drift.
    differences = [per_call("bench-session") - per_call(None) for _ in range(11)]
    return statistics.median(differences)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per contender per turn")
    parser.add_argument("--rounds", type=int, default=15, help="turns per contender and placement")
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.calls, opts.rounds = 200, 2

    raw = RawEcho()
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        with Pool(Adder, size=1) as pool, ProcessPoolExecutor(max_workers=1) as executor:
            executor.submit(add, 1, 1).result()  # start its worker outside the measurement
            contenders = {
                "snakepit execute": lambda i: pool.execute("add", {"a": i, "b": 1}),
                "snakepit execute, session": lambda i: pool.execute("add", {"a": i, "b": 1}, session_id="s"),
                "ProcessPoolExecutor": lambda i: executor.submit(add, i, 1).result(),
                "raw os.pipe + msgpack": raw.call,
            }
            workers = [w["pid"] for w in pool.stats()["worker_info"]] + list(executor._processes) + [raw.proc.pid]
            for placement, (owner_cpus, worker_cpus) in placements().items():
                pin(workers, owner_cpus, worker_cpus)
                samples: dict[str, list[float]] = {name: [] for name in contenders}
                for call in contenders.values():
                    _timed(call, 100)  # warm up in this placement
                for _ in range(opts.rounds):
                    for name, call in contenders.items():
                        samples[name] += _timed(call, opts.calls)
                results[placement] = {
                    name: {"p50_us": _pct(v, 0.50), "p99_us": _pct(v, 0.99), "mean_us": statistics.fmean(v) * 1e6}
                    for name, v in samples.items()
                }
            pin(workers, None, None)
            routing = _routing_overhead(pool, 2_000 if opts.quick else 5_000)
    finally:
        pin([], None, None)
        raw.close()

    n = opts.calls * opts.rounds
    for placement, table in results.items():
        raw_p50 = table["raw os.pipe + msgpack"]["p50_us"]
        executor_p50 = table["ProcessPoolExecutor"]["p50_us"]
        print(f"\nRound trip of a tiny call, {placement}: {n:,} calls per contender in {opts.rounds} interleaved turns")
        width = max(map(len, table))
        print(
            f"{'contender'.ljust(width)}  {'p50 us':>8}  {'p99 us':>8}  {'p99/p50':>7}  {'p50 / raw':>9}  {'executor / p50':>14}"
        )
        for name, row in table.items():
            print(
                f"{name.ljust(width)}  {row['p50_us']:>8.1f}  {row['p99_us']:>8.1f}  {row['p99_us'] / row['p50_us']:>6.2f}x"
                f"  {row['p50_us'] / raw_p50:>8.2f}x  {executor_p50 / row['p50_us']:>13.2f}x"
            )
    worst = max(results.values(), key=lambda t: t["snakepit execute"]["p50_us"] / t["raw os.pipe + msgpack"]["p50_us"])
    worst_name = next(name for name, table in results.items() if table is worst)
    ratio = worst["snakepit execute"]["p50_us"] / worst["raw os.pipe + msgpack"]["p50_us"]
    print(f"\nworst placement for snakepit execute: {worst_name}, {ratio:.2f}x the raw pipe's p50")
    plain = results["unpinned"]["snakepit execute"]["p50_us"]
    share = routing * 1e6 / plain * 100
    print(f"session routing: +{routing * 1e6:.2f} us per call in-process = {share:.2f}% of the unpinned p50 round trip")
    payload = {
        "benchmark": "execute_latency",
        "calls": n,
        "placements": results,
        "session_routing_us": routing * 1e6,
        "session_routing_share_pct": share,
    }
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

"""Round-trip latency of a tiny call: snakepit (with and without a session) vs ProcessPoolExecutor.

Each contender makes the same tiny call (``add(a, b)``) one at a time from one thread, and we
record every round trip. Contenders take turns in rounds, so noise on a shared machine hits them
alike; the table shows p50 and p99 over all rounds.

* ``snakepit execute``: ``pool.execute("add", {...})`` on a one-worker pool;
* ``snakepit execute, session``: the same with ``session_id=`` (session lookup, pin, affinity);
* ``ProcessPoolExecutor``: ``executor.submit(add, a, b).result()`` with one worker;
* ``raw os.pipe + msgpack``: a child echoing length-prefixed msgspec frames (the ceiling).

It also measures the routing cost of a session directly: checkout and check-in with a session
minus without, in-process, as a share of snakepit's p50 round trip.

Run: ``python -m benchmarks.execute_latency [--calls N] [--rounds R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import msgspec

from snakepit import BaseAdapter, Pool, tool

from ._harness import emit_json


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
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ECHO_CHILD, str(to_child_r), str(from_child_w)], pass_fds=(to_child_r, from_child_w)
        )
        os.close(to_child_r)
        os.close(from_child_w)
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per contender per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    opts = parser.parse_args(argv)

    samples: dict[str, list[float]] = {
        "snakepit execute": [],
        "snakepit execute, session": [],
        "ProcessPoolExecutor": [],
        "raw os.pipe + msgpack": [],
    }
    raw = RawEcho()
    with Pool(Adder, size=1) as pool, ProcessPoolExecutor(max_workers=1) as executor:
        executor.submit(add, 1, 1).result()  # start its worker outside the measurement
        contenders = {
            "snakepit execute": lambda i: pool.execute("add", {"a": i, "b": 1}),
            "snakepit execute, session": lambda i: pool.execute("add", {"a": i, "b": 1}, session_id="s"),
            "ProcessPoolExecutor": lambda i: executor.submit(add, i, 1).result(),
            "raw os.pipe + msgpack": raw.call,
        }
        for call in contenders.values():
            _timed(call, 50)  # warm up
        for _ in range(opts.rounds):
            for name, call in contenders.items():
                samples[name] += _timed(call, opts.calls)
        routing = _routing_overhead(pool, 5_000)
    raw.close()

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    table = {name: {"p50_us": pct(v, 0.50), "p99_us": pct(v, 0.99), "mean_us": statistics.fmean(v) * 1e6} for name, v in samples.items()}
    reference = table["ProcessPoolExecutor"]["p50_us"]
    n = opts.calls * opts.rounds
    print(f"\nRound trip of a tiny call, {n:,} calls per contender in {opts.rounds} interleaved rounds")
    width = max(map(len, table))
    print(f"{'contender'.ljust(width)}  {'p50 us':>9}  {'p99 us':>9}  {'p50 vs ProcessPoolExecutor':>27}")
    for name, row in table.items():
        print(f"{name.ljust(width)}  {row['p50_us']:>9.1f}  {row['p99_us']:>9.1f}  {reference / row['p50_us']:>26.2f}x lower")
    plain = table["snakepit execute"]["p50_us"]
    share = routing * 1e6 / plain * 100
    print(f"\nsession routing: +{routing * 1e6:.2f} us per call in-process = {share:.2f}% of the p50 round trip "
          f"(p50 with a session - without: {table['snakepit execute, session']['p50_us'] - plain:+.1f} us)")
    payload = {"benchmark": "execute_latency", "calls": n, "table": table, "session_routing_us": routing * 1e6, "session_routing_share_pct": share}
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

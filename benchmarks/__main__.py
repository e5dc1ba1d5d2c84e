"""Run every benchmark (or the named ones): ``python -m benchmarks [stream_throughput ...]``."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

BENCHMARKS = ["stream_throughput", "execute_latency", "map_throughput", "grpc_throughput", "ray_backend"]


def main(names: Sequence[str] | None = None) -> int:
    names = list(names or sys.argv[1:]) or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        importlib.import_module(f"benchmarks.{name}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())

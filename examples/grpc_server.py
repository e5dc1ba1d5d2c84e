"""Serve a pool over gRPC, to be called from other processes and languages.

    python examples/grpc_server.py [--address 127.0.0.1:50051]   # until Ctrl-C
    python examples/grpc_server.py --address 127.0.0.1:0 --run-client

``pool.serve()`` runs a gRPC server inside this process that speaks Snakepit's bridge protocol;
closing the pool stops it. A loopback address is served as it is; any other needs a token
(``token=``, clients send ``authorization: Bearer <token>``) or mutual TLS, see the security
section of the gRPC guide. ``--run-client`` runs ``grpc_client.py`` in a process of its own
against the served address, then stops.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

from snakepit import BaseAdapter, Pool, tool


class Calculator(BaseAdapter):
    @tool(description="add two numbers")
    def add(self, a: int, b: int = 1) -> int:
        return a + b

    @tool(description="count up, one chunk per step")
    def progress(self, steps: int = 3):
        for step in range(1, steps + 1):
            yield {"step": step, "total": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-client", action="store_true", help="call the server from another process, then stop")
    opts = parser.parse_args()
    with Pool(Calculator, size=opts.workers) as pool:
        server = pool.serve(opts.address)
        print(f"serving {len(pool.tools())} tools at {server.address}", flush=True)
        if opts.run_client:
            client = Path(__file__).with_name("grpc_client.py")
            subprocess.run([sys.executable, str(client), server.address], check=True)
            return
        try:
            threading.Event().wait()  # until Ctrl-C
        except KeyboardInterrupt:
            print("stopping")


if __name__ == "__main__":
    main()

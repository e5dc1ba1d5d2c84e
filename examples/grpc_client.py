"""Call a served pool from another process: the pool's own methods, over gRPC.

    python examples/grpc_client.py 127.0.0.1:50051

Start the server first (``python examples/grpc_server.py``, or ``snakepit serve
snakepit.adapters.showcase:ShowcaseAdapter``). ``snakepit.grpc.Client`` has the pool's call
methods, with the same arguments, results and errors: code written against a ``Pool`` runs
against it. Clients in other languages use Snakepit's bridge protocol
(``snakepit/grpc/bridge.proto``) instead.
"""

from __future__ import annotations

import argparse

from snakepit import SnakepitError
from snakepit.grpc import Client


def main(address: str) -> None:
    with Client(address) as client:
        print("tools:", ", ".join(spec.name for spec in client.tools()))
        print("add(2, 3) =", client.execute("add", a=2, b=3))
        for event in client.stream("progress", steps=3):
            print("progress:", event)
        print("map:", list(client.map("add", ({"a": i, "b": i} for i in range(5)))))
        try:
            client.execute("add", a="two")
        except SnakepitError as exc:  # the same error a local pool raises
            print(f"refused: {exc.category}/{exc.reason}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="the server's host:port")
    main(parser.parse_args().address)

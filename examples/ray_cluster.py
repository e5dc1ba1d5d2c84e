"""The same pool on Ray: each worker a Ray actor, on this machine or anywhere on a cluster.

    python examples/ray_cluster.py                          # a local Ray, started and stopped here
    python examples/ray_cluster.py --address ray://head:10001 --workers 8

Needs the ``ray`` extra (``pip install 'snakepit-pool[ray]'``). Nothing of the code that calls
the pool changes: ``execute``, ``stream``, ``map``, sessions and their affinity, errors. Ray runs
the workers and carries their messages; ``actor_options`` go to ``ray.remote`` as they are
(``{"num_gpus": 1}`` gives each worker a GPU, ``runtime_env`` ships code to other nodes).
"""

from __future__ import annotations

import argparse
import os
import socket

from snakepit import BaseAdapter, Pool, tool


class Featurizer(BaseAdapter):
    def initialize(self) -> None:
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    @tool(description="character statistics of a document")
    def featurize(self, text: str) -> dict:
        return {"length": len(text), "words": len(text.split()), "worker": self.where}

    @tool(description="report progress over a long job")
    def crawl(self, pages: int = 3):
        for page in range(1, pages + 1):
            yield {"page": page, "of": pages, "worker": self.where}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=None, help="a Ray cluster (default: RAY_ADDRESS, else a new local Ray)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--documents", type=int, default=1000)
    opts = parser.parse_args()
    documents = [f"document {i} " + "word " * (i % 50) for i in range(opts.documents)]
    light = {"num_cpus": 0}  # featurizing is light: reserve no CPU per actor (the default reserves one)
    with Pool(Featurizer, size=opts.workers, backend="ray", ray_address=opts.address, actor_options=light) as pool:
        features = list(pool.map("featurize", ({"text": d} for d in documents)))
        workers = sorted({f["worker"] for f in features})
        print(f"featurized {len(features):,} documents on {len(workers)} actors: {', '.join(workers)}")
        for event in pool.stream("crawl", pages=3):
            print(f"crawled page {event['page']}/{event['of']} on {event['worker']}")


if __name__ == "__main__":
    main()

"""The gRPC facade: the pool served to remote clients over Snakepit's bridge protocol.

Needs the ``grpc`` extra (``pip install 'snakepit[grpc]'``); ``import snakepit`` never imports
grpc. ``Pool.serve(...)`` starts a :class:`Server`; :class:`Client` calls a served pool with the
pool's own methods.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "ClientTLS", "Server", "TLS"]


def __getattr__(name: str) -> Any:  # imported on first use: grpc loads only for those who use it
    if name in ("Client", "ClientTLS"):
        from . import client

        return getattr(client, name)
    if name in ("Server", "TLS"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'snakepit.grpc' has no attribute {name!r}")

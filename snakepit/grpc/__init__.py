"""The gRPC facade: the pool served to remote clients over Snakepit's bridge protocol.

Needs the ``grpc`` extra (``pip install 'snakepit-pool[grpc]'``); ``import snakepit`` never imports
grpc. :func:`serve` (or ``Pool.serve(...)``) starts a :class:`Server`; :class:`Client` calls a
served pool with the pool's own methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snakepit import Pool
    from snakepit.grpc._client import Client, ClientTLS
    from snakepit.grpc._server import TLS, Server

__all__ = ["Client", "ClientTLS", "Server", "TLS", "serve"]


def serve(
    pool: Pool,
    address: str = "127.0.0.1:50051",
    *,
    token: str | None = None,
    tls: TLS | None = None,
    allow_pickle: bool = False,
    insecure: bool = False,
    max_message_mb: float = 100,
) -> Server:
    """Serve ``pool`` at ``address``: :meth:`Pool.serve <snakepit.Pool.serve>`, as a function."""
    server: Server = pool.serve(
        address, token=token, tls=tls, allow_pickle=allow_pickle, insecure=insecure, max_message_mb=max_message_mb
    )
    return server


_EXTRA = ("grpc", "google", "grpc_health", "grpc_reflection")  # what the grpc extra installs


def __getattr__(name: str) -> Any:  # imported on first use: grpc loads only for those who use it
    try:
        if name in ("Client", "ClientTLS"):
            from snakepit.grpc import _client

            return getattr(_client, name)
        if name in ("Server", "TLS"):
            from snakepit.grpc import _server

            return getattr(_server, name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _EXTRA:
            raise
        raise ModuleNotFoundError(
            f"snakepit.grpc.{name} needs the grpc extra: pip install 'snakepit-pool[grpc]' ({exc})", name=exc.name
        ) from None
    raise AttributeError(f"module 'snakepit.grpc' has no attribute {name!r}")

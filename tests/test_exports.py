"""The public API: which modules and names are public, and one call surface for every front end."""

from __future__ import annotations

import inspect
import pkgutil

import pytest

import snakepit

PUBLIC_MODULES = {
    "snakepit",
    "snakepit.__main__",
    "snakepit.adapters",
    "snakepit.adapters.showcase",
    "snakepit.grpc",
    "snakepit.grpc.bridge_pb2",
    "snakepit.grpc.bridge_pb2_grpc",
    "snakepit.grpc.generate",
    "snakepit.executor",
    "snakepit.progress",
    "snakepit.shared",
    "snakepit.telemetry",
}

SNAKEPIT = {
    "Executor",
    "Pool",
    "Stream",
    "AsyncStream",
    "Session",
    "SessionInfo",
    "CallRequest",
    "PoolStats",
    "WorkerInfo",
    "PoolMetrics",
    "MetricsServer",
    "BaseAdapter",
    "tool",
    "ToolSpec",
    "ParameterSpec",
    "StreamChunk",
    "StreamResult",
    "Encoded",
    "HALT",
    "Affinity",
    "CallCancelled",
    "SnakepitError",
    "ValidationError",
    "ToolError",
    "RemoteTraceback",
    "WorkerError",
    "TimeoutError",
    "PoolError",
}

CALLS = ("execute", "execute_stream", "stream", "aexecute", "aexecute_stream", "astream")
REQUEST_LEVEL = ("run", "run_stream", "open_stream", "arun", "arun_stream", "open_astream")


def _all_modules() -> set[str]:
    names = {"snakepit"}
    for info in pkgutil.walk_packages(snakepit.__path__, "snakepit."):
        names.add(info.name)
    return names


def test_every_module_not_listed_public_is_private():
    public = {name for name in _all_modules() if not any(part.startswith("_") for part in name.split(".")[1:])}
    public |= {"snakepit.__main__"}
    assert public == PUBLIC_MODULES


def test_the_public_names():
    assert set(snakepit.__all__) == SNAKEPIT and len(snakepit.__all__) == len(SNAKEPIT)
    for name in snakepit.__all__:
        value = getattr(snakepit, name)
        if isinstance(value, type):  # found where users find it, not in the private module
            assert value.__module__ == "snakepit", name
    assert set(dir(snakepit)) >= SNAKEPIT
    with pytest.raises(AttributeError):
        snakepit.Dispatcher  # noqa: B018


def test_the_public_submodules():
    from snakepit import adapters, progress, shared, telemetry
    from snakepit.adapters import showcase

    assert set(telemetry.__all__) == {"emit", "span"}
    assert set(shared.__all__) == {"empty", "zeros"}
    assert set(progress.__all__) == {"track", "progress_callback"}
    assert showcase.__all__ == ["ShowcaseAdapter"]
    assert adapters.__doc__
    for module in (telemetry, progress, shared, showcase):
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_the_grpc_names():
    pytest.importorskip("grpc")
    from snakepit import grpc

    assert set(grpc.__all__) == {"Client", "ClientTLS", "Server", "TLS", "serve"}
    for name in grpc.__all__:
        assert getattr(grpc, name) is not None


def test_pool_client_and_session_share_one_call_surface():
    """The six call methods are written once: the same signatures (and docs) on all three.
    A Pool and a Client map with the same signature; a Session does not map."""
    pytest.importorskip("grpc")
    from snakepit.grpc import Client

    for name in CALLS:
        pool, client, session = (inspect.signature(getattr(cls, name)) for cls in (snakepit.Pool, Client, snakepit.Session))
        assert pool == client == session, name
        assert getattr(snakepit.Pool, name).__doc__
    for name in REQUEST_LEVEL:
        for cls in (snakepit.Pool, Client, snakepit.Session):
            parameters = list(inspect.signature(getattr(cls, name)).parameters)
            assert parameters[:2] == ["self", "request"], (cls, name)
    for name in ("map", "amap"):
        assert inspect.signature(getattr(snakepit.Pool, name)) == inspect.signature(getattr(Client, name)), name
    only_on_pool = {"map", "amap", "serve", "start", "stats", "tools"}
    assert not {"serve", "start", "stats"} & set(dir(Client))
    assert not only_on_pool & set(dir(snakepit.Session))
    for name in ("session", "touch_session", "close_session", "tools", "close"):
        assert callable(getattr(snakepit.Pool, name)) and callable(getattr(Client, name)), name


def test_request_level_methods_take_a_call_request(pool_factory=None):
    """``CallRequest`` is exported: a front end of your own calls a pool with it."""
    from snakepit.adapters.showcase import ShowcaseAdapter

    with snakepit.Pool(ShowcaseAdapter, size=1) as pool:
        assert pool.run(snakepit.CallRequest("add", {"a": 1, "b": 2})) == 3
        with pool.session("s") as session:
            assert session.run(snakepit.CallRequest("add", {"a": 2, "b": 2})) == 4
            assert session.execute("add", {"a": 1, "b": 1}, session_id="s") == 2
            with pytest.raises(snakepit.ValidationError) as info:
                session.execute("add", {"a": 1, "b": 1}, session_id="other")
            assert info.value.reason == "invalid_arguments"
            described = pool.touch_session("s")
            assert described is not None and described.worker_id == session.worker_id is not None
        assert pool.touch_session("s") is None

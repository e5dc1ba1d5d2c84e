"""snakepit.grpc.Client against a real server on 127.0.0.1: the pool's methods, values and errors,
as code written against a Pool expects them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("grpc")

from helpers import Faulty, Point, Toolbox, await_for, wait_for

from snakepit import HALT, Pool, SnakepitError
from snakepit.grpc import Client


@pytest.fixture(scope="module")
def remote():
    """A pool served with pickles allowed, the client, and the pool itself (for comparison)."""
    with Pool(Toolbox, size=2, start_timeout=30) as pool:
        server = pool.serve("127.0.0.1:0", allow_pickle=True)
        with Client(server.address) as client:
            yield client, pool


@pytest.mark.parametrize(
    "args",
    [
        {"value": (1, "two")},
        {"value": {3, 4}},
        {"value": Point(1, 2)},
        {"value": b"\x00\xff"},
        {"value": 2**80},
        {"value": {"nested": [1.5, None, True]}},
    ],
)
def test_values_round_trip_exactly(remote, args):
    client, pool = remote
    assert client.execute("echo", args) == pool.execute("echo", args) == args["value"]


CALLS = [
    ("nope", {}),
    ("add", {"a": "two"}),
    ("add", {"b": 1}),
    ("fail", {"message": "boom"}),
    ("unserializable_result", {}),
    ("sleep", {"seconds": 5}),
]


@pytest.mark.parametrize("tool, args", CALLS)
def test_errors_have_the_category_and_reason_of_in_process_calls(remote, tool, args):
    client, pool = remote
    outcomes = []
    for target in (pool, client):
        with pytest.raises(SnakepitError) as info:
            target.execute(tool, args, timeout=0.3 if tool == "sleep" else None)
        outcomes.append((type(info.value), info.value.category, info.value.reason))
    assert outcomes[0] == outcomes[1]


def test_streams_and_their_results(remote):
    client, pool = remote
    assert list(client.stream("count", {"n": 3})) == list(pool.stream("count", {"n": 3}))
    stream = client.stream("with_final", {"n": 2})
    assert list(stream) == [{"i": 0}, {"i": 1}, {"done": True}]
    assert stream.result.chunks == 3 and not stream.result.synthetic_final and stream.result.worker_id > 0
    seen = []
    result = client.execute_stream("count", {"n": 5}, lambda chunk: seen.append(chunk) or (HALT if len(seen) == 2 else None))
    assert result.halted and len(seen) == 2
    with pytest.raises(SnakepitError) as info:
        list(client.stream("stream_then_fail", {"n": 2}))
    assert info.value.reason == "tool_exception"


def test_tools_and_sessions(remote):
    client, pool = remote
    assert {spec.name: spec for spec in client.tools()} == {spec.name: spec for spec in pool.tools()}
    with client.session("alice", affinity="strict_queue") as alice:
        assert len({alice.execute("state")["pid"] for _ in range(4)}) == 1
    assert "alice" not in pool._dispatcher.sessions


def test_async_twins(remote):
    client, pool = remote

    async def main() -> None:
        assert await client.aexecute("add", {"a": 1, "b": 2}) == 3
        assert [chunk async for chunk in client.astream("count", {"n": 2})] == list(pool.stream("count", {"n": 2}))
        result = await client.aexecute_stream("count", {"n": 9}, lambda chunk: HALT if chunk["number"] == 2 else None)
        assert result.halted and result.chunks == 3
        with pytest.raises(SnakepitError) as info:
            await client.aexecute("fail")
        assert info.value.reason == "tool_exception"

    asyncio.run(main())


def test_cancelling_a_remote_call_cancels_the_tool():
    with Pool(Faulty, size=1) as pool, Client(pool.serve("127.0.0.1:0").address) as client:
        worker = pool.execute("pid")
        for _ in client.stream("guarded", {"delay": 0.01}):
            break
        wait_for(lambda: pool.execute("closed") == 1)

        async def main() -> None:
            task = asyncio.ensure_future(client.aexecute("blocked", {"how": "sleep"}))
            await await_for(lambda: pool.stats()["busy"] == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        wait_for(lambda: pool.execute("counters")["finished_calls"] == 1)  # interrupted in the worker
        assert pool.execute("pid") == worker


def test_leaving_an_async_stream_early_cancels_the_tool():
    with Pool(Faulty, size=1) as pool, Client(pool.serve("127.0.0.1:0").address) as client:

        async def main() -> None:
            async for _ in client.astream("guarded", {"delay": 0.01}):
                break

        asyncio.run(main())
        wait_for(lambda: pool.stats()["busy"] == 0, timeout=10)
        assert pool.execute("closed") == 1  # the generator's finally ran


def test_results_as_large_as_the_server_sends_arrive(remote):
    client, pool = remote
    assert client.execute("big", {"size": 5_000_000}) == pool.execute("big", {"size": 5_000_000})
    chunks = list(client.stream("big_then_small", {"size": 5_000_000, "small": 2, "delay": 0}))
    assert len(chunks[0]) == 5_000_000 and chunks[1:] == [0, 1]
    assert len(asyncio.run(client.aexecute("big", {"size": 5_000_000}))) == 5_000_000


def test_a_value_larger_than_a_message_is_a_serialization_error():
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0", max_message_mb=1).address
        with Client(address) as client, Client(address, max_message_mb=0.5) as small:
            calls = [
                lambda: client.execute("big", {"size": 2_000_000}),  # too big for the server to send
                lambda: client.execute("echo", {"value": b"x" * 2_000_000}),  # too big for it to receive
                lambda: small.execute("big", {"size": 800_000}),  # too big for this client to receive
            ]
            for call in calls:
                with pytest.raises(SnakepitError) as info:
                    call()
                assert (info.value.category, info.value.reason) == ("validation", "serialization_error")
            assert client.execute("add", {"a": 1}) == 2


@pytest.mark.parametrize(
    "args, options",
    [
        ({"a": 1}, {"session_id": ""}),
        ({"a": 1}, {"session_id": 5}),
        ({"a": 1}, {"correlation_id": 7}),
        ({"a": 1}, {"timeout": 0}),
        ({"a": 1}, {"affinity": "sideways"}),
        ({1: 2}, {}),
    ],
)
def test_the_client_checks_a_call_as_the_pool_does(remote, args, options):
    client, pool = remote
    outcomes = []
    for target in (pool, client):
        with pytest.raises(SnakepitError) as info:
            target.execute("add", args, **options)
        outcomes.append((info.value.category, info.value.reason))
    assert outcomes[0] == outcomes[1] == ("validation", "invalid_arguments")


def test_a_closed_client_refuses_calls():
    with Pool(Toolbox, size=1) as pool:
        client = Client(pool.serve("127.0.0.1:0").address)
        client.close()
        for call in (
            lambda: client.execute("add", {"a": 1}),
            client.tools,
            lambda: client.session("s"),
            lambda: asyncio.run(client.aexecute("add", {"a": 1})),
        ):
            with pytest.raises(SnakepitError) as info:
                call()
            assert info.value.reason == "pool_closed"
        with pytest.raises(SnakepitError) as info:
            client.session("")
        assert info.value.reason == "invalid_arguments"


def test_a_token_and_a_server_that_refuses_pickles():
    with Pool(Toolbox, size=1) as pool:
        address = pool.serve("127.0.0.1:0", token="t0ken").address
        with Client(address, token="t0ken") as client:
            assert client.execute("add", {"a": 1}) == 2
            with pytest.raises(SnakepitError) as info:
                client.execute("echo", {"value": (1, 2)})  # pickled argument, refused by default
            assert info.value.reason == "serialization_error"
            assert client.execute("pair", {"p": [1, 2]}) == (1.0, 2.0)  # results still come pickled
        with Client(address, token="wrong") as client:
            with pytest.raises(SnakepitError) as info:
                client.execute("add", {"a": 1})
            assert info.value.reason == "unauthenticated"


def test_a_server_that_is_not_there_is_a_pool_error():
    with Client("127.0.0.1:1") as client:
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            client.execute("add", {"a": 1}, timeout=2)
        assert info.value.category in ("pool", "timeout") and time.monotonic() - started < 10


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakepit", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_the_command_line_serves_calls_and_shuts_down_cleanly():
    import psutil

    env = {**os.environ, "SNAKEPIT_TOKEN": "cli-token"}
    server = subprocess.Popen(
        [sys.executable, "-m", "snakepit", "serve", "showcase", "--size", "2", "--address", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        banner = server.stdout.readline()
        assert banner.startswith("serving showcase (2 workers) on 127.0.0.1:"), banner + server.stderr.read()
        address = banner.split()[-1]
        workers = [
            child.pid for child in psutil.Process(server.pid).children(recursive=True) if child.name() == "snakepit-worker"
        ]
        assert len(workers) == 2
        listed = _cli("tools", "--address", address, env={"SNAKEPIT_TOKEN": "cli-token"})
        assert listed.returncode == 0 and "add(a: float, b: float = 1)  [call]" in listed.stdout
        called = _cli("call", "--address", address, "add", '{"a": 2, "b": 3}', env={"SNAKEPIT_TOKEN": "cli-token"})
        assert (called.returncode, called.stdout.strip()) == (0, "5.0")
        streamed = _cli(
            "call",
            "--address",
            address,
            "progress_stream",
            '{"steps": 2, "delay": 0}',
            "--stream",
            "--session",
            "s",
            env={"SNAKEPIT_TOKEN": "cli-token"},
        )
        assert [json.loads(line)["step"] for line in streamed.stdout.splitlines()] == [1, 2]
        refused = _cli("call", "--address", address, "add", '{"a": 1}', env={"SNAKEPIT_TOKEN": ""})
        assert refused.returncode == 1 and "unauthenticated" in refused.stderr
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0
        assert "shutting down" in server.stdout.read()
        wait_for(
            lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)
        )
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_values_nested_too_deep_fail_on_the_client_as_on_the_pool(remote):
    client, pool = remote
    for depth in (1_000, 3_000):
        errors = []
        for caller in (client, pool):
            with pytest.raises(SnakepitError) as info:
                caller.execute("echo", {"value": _nested(depth)})
            errors.append((info.value.category, info.value.reason))
        assert errors == [("validation", "serialization_error")] * 2
    assert client.execute("echo", {"value": _nested(50)}) == pool.execute("echo", {"value": _nested(50)}) == _nested(50)


def test_leaving_a_loop_early_cancels_a_remote_stream_still_referenced():
    with Pool(Faulty, size=1) as pool, Client(pool.serve("127.0.0.1:0").address) as client:
        stream = client.stream("guarded", {"delay": 0.01})
        for _ in stream:
            break
        wait_for(lambda: pool.execute("closed") == 1)  # the tool's finally ran, though `stream` lives on
        assert list(stream) == []  # a second loop sees the stream cancelled

        async def main() -> None:
            astream = client.astream("guarded", {"delay": 0.01})
            async for _ in astream:
                break
            wait_for(lambda: pool.execute("closed") == 2)
            assert [item async for item in astream] == []

        asyncio.run(main())


def test_a_remote_stream_iterated_again_after_its_end_or_its_error_yields_nothing(remote):
    client, _ = remote
    ended = client.stream("count", {"n": 3})
    assert len(list(ended)) == 3 and list(ended) == []
    failed = client.stream("stream_then_fail", {"n": 2})
    with pytest.raises(SnakepitError):
        list(failed)
    assert list(failed) == []

    async def async_twin() -> None:
        failing = client.astream("stream_then_fail", {"n": 1})
        with pytest.raises(SnakepitError):
            [c async for c in failing]
        assert [c async for c in failing] == []

    asyncio.run(async_twin())


def test_halt_on_the_tools_own_final_chunk_halts_remotely_as_in_process(remote):
    client, pool = remote
    results = [
        caller.execute_stream("with_final", {"n": 2}, lambda chunk: HALT if "done" in chunk else None)
        for caller in (client, pool)
    ]
    assert [(r.halted, r.synthetic_final) for r in results] == [(True, False)] * 2


def test_a_remote_streams_result_is_the_pools(remote):
    """None until the stream's end (also after leaving it early), then its StreamResult, the
    correlation id included, as in process."""
    client, pool = remote
    for caller in (client, pool):
        stream = caller.stream("count", {"n": 10})
        for _ in stream:
            break
        assert stream.result is None
        stream = caller.stream("count", {"n": 3})
        assert len(list(stream)) == 3
        assert stream.result is not None and stream.result.chunks == 3 and not stream.result.halted
        assert stream.result.correlation_id  # generated by the pool
    given = client.stream("count", {"n": 1}, correlation_id="mine-1")
    list(given)
    assert given.result.correlation_id == "mine-1"

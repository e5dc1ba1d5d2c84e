"""Batched streams (``batch=N`` with ``encode=``) under a demanding user: every chunk exactly once
and in order, whatever it is (metadata, final, bytes, NaN, tuples, what JSON cannot carry,
elements larger than the crash-safe queue), whichever driver reads it, however many threads
the worker runs, whatever ends the stream early (a death, a timeout, a break, a HALT, a
cancelled task), with the worker clean for the next call; and through the gRPC facade."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import threading
from typing import Any

import pytest
from helpers import Opaque, Toolbox, wait_for_file

from snakepit import HALT, Encoded, Pool, SnakepitError, StreamChunk, tool
from snakepit.grpc import Client
from snakepit.grpc import _codec as codec

MIB = 1 << 20


class Scripted(Toolbox):
    thread_safe = True  # its tools keep no state

    @tool
    def script(self, steps: list):
        """Yield what ``steps`` says: ("v", value), ("meta", value, metadata), ("final", value),
        ("burst", n, prefix): n strings as fast as they come, ("big", n): a string of n bytes
        (made here: the call's arguments stay small), ("wait", path): until the file exists,
        ("exit",): the worker dies at once."""
        for step in steps:
            kind = step[0]
            if kind == "v":
                yield step[1]
            elif kind == "meta":
                yield StreamChunk(data=step[1], metadata=step[2])
            elif kind == "final":
                yield StreamChunk(data=step[1], is_final=True)
            elif kind == "burst":
                for i in range(step[1]):
                    yield f"{step[2]}{i}"
            elif kind == "big":
                yield "x" * step[1]
            elif kind == "wait":
                wait_for_file(step[1])
            elif kind == "exit":
                os._exit(9)


def _flat(values: list[Encoded]) -> list[Any]:
    """The chunks of a batched stream's values, in order (each value a non-empty list)."""
    chunks = []
    for value in values:
        batch = codec.decode_value(value.data, value.content_type)
        assert type(batch) is list and batch, (value.content_type, value.data[:100])
        chunks += batch
    return chunks


def _as_json(value: Any) -> Any:
    """A chunk as an element of a JSON array carries it (as it would travel alone)."""
    if type(value) is bytes:
        return base64.b64encode(value).decode()
    if type(value) is float and math.isnan(value):
        return "NaN"
    if type(value) is tuple:
        return [_as_json(item) for item in value]
    return value


def _expected(steps: list, mode: str) -> list[Any]:
    chunks: list[Any] = []
    for step in steps:
        if step[0] in ("v", "meta", "final"):
            chunks.append(_as_json(step[1]) if mode == "json" else step[1])
            if step[0] == "final":
                break
        elif step[0] == "burst":
            chunks += [f"{step[2]}{i}" for i in range(step[1])]
        elif step[0] == "big":
            chunks.append("x" * step[1])
    return chunks


def _check(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for index, (have, want) in enumerate(zip(got, expected, strict=True)):
        if type(want) is float and math.isnan(want):
            assert type(have) is float and math.isnan(have), index
        else:
            assert have == want, (index, repr(have)[:80], repr(want)[:80])


def _mixed(mode: str) -> list:
    """Bursts around every kind of chunk, elements over the array's 1 MiB and the queue's 2 MiB."""
    steps: list = [("burst", 300, "a"), ("v", ""), ("v", b"raw"), ("v", b""), ("v", (1, 2)), ("v", float("nan"))]
    steps += [("burst", 100, "b"), ("big", MIB + 10), ("burst", 50, "c"), ("big", 3 * MIB), ("burst", 50, "d")]
    steps += [("big", 300_000), ("v", 2**70), ("v", "é\u2028"), ("meta", "m", {"k": 1}), ("burst", 30, "e")]
    if mode == "pickle":  # what JSON cannot carry: a pickled list of its own
        steps += [("v", Opaque()), ("v", "lone \udc80"), ("v", float("inf")), ("burst", 30, "f")]
    return [*steps, ("final", "F"), ("v", "never")]


@pytest.fixture(scope="module")
def pool():
    with Pool(Scripted, size=1, start_timeout=30) as pool:
        yield pool


@pytest.mark.parametrize("batch", [1, 7, 10_000])
@pytest.mark.parametrize("mode", ["json", "pickle"])
def test_every_kind_of_chunk_arrives_once_in_order(pool, mode, batch):
    steps = _mixed(mode)
    values = list(pool.stream("script", {"steps": steps}, encode=mode, batch=batch))
    _check(_flat(values), _expected(steps, mode))
    assert max(len(codec.decode_value(value.data, value.content_type)) for value in values) <= batch


@pytest.mark.parametrize("mode", ["json", "pickle"])
def test_every_driver_and_a_session_deliver_the_same(pool, mode):
    steps = _mixed(mode)
    expected = _expected(steps, mode)
    seen: list[Encoded] = []
    pool.execute_stream("script", {"steps": steps}, seen.append, encode=mode, batch=16)
    _check(_flat(seen), expected)
    awaited: list[Encoded] = []

    async def both() -> list[Encoded]:
        async def keep(value: Encoded) -> None:
            awaited.append(value)

        await pool.aexecute_stream("script", {"steps": steps}, keep, encode=mode, batch=16)
        return [value async for value in pool.astream("script", {"steps": steps}, encode=mode, batch=16)]

    _check(_flat(asyncio.run(both())), expected)
    _check(_flat(awaited), expected)
    with pool.session("batched") as session:
        _check(_flat(list(session.stream("script", {"steps": steps}, encode=mode, batch=16))), expected)


def test_a_lone_surrogate_ends_a_json_batched_stream_after_the_chunks_before_it(pool):
    got: list[Encoded] = []
    with pytest.raises(SnakepitError) as info:
        for value in pool.stream(
            "script", {"steps": [("burst", 50, "a"), ("v", "\udc80"), ("burst", 5, "b")]}, encode="json", batch=8
        ):
            got.append(value)
    assert info.value.reason == "serialization_error"
    _check(_flat(got), _expected([("burst", 50, "a")], "json"))
    assert pool.execute("add", {"a": 1}) == 2


def _clean(pool: Pool) -> None:
    """The worker's next calls see nothing of the stream before (no array left open to join)."""
    steps = [("burst", 500, "n"), ("v", b"x"), ("burst", 500, "m")]
    for mode in ("json", "pickle"):
        _check(_flat(list(pool.stream("script", {"steps": steps}, encode=mode, batch=64))), _expected(steps, mode))
    assert list(pool.stream("script", {"steps": steps})) == _expected(steps, "pickle")
    assert pool.execute("add", {"a": 1}) == 2


def test_leaving_a_batched_stream_early_leaves_the_worker_clean(pool, tmp_path):
    endless = [("burst", 1_000_000, "a")]
    with pool.stream("script", {"steps": endless}, encode="json", batch=50) as stream:
        for index, _ in enumerate(stream):
            if index == 3:
                break
    _clean(pool)
    stream = pool.stream("script", {"steps": endless}, encode="pickle", batch=50)
    values = iter(stream)
    next(values), next(values)
    stream.close()
    _clean(pool)
    taken: list[Encoded] = []

    def halt_at_two(value: Encoded) -> object:
        taken.append(value)
        return HALT if len(taken) == 2 else None

    result = pool.execute_stream("script", {"steps": endless}, halt_at_two, encode="json", batch=50)
    assert result.halted and result.chunks == 2
    _clean(pool)

    async def cancelled() -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in pool.astream("script", {"steps": endless}, encode="json", batch=50):
                first.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    _clean(pool)
    got: list[Encoded] = []
    never = str(tmp_path / "never")
    with pytest.raises(SnakepitError) as info:
        for value in pool.stream(
            "script", {"steps": [("burst", 2000, "a"), ("wait", never)]}, encode="json", batch=50, timeout=1.0
        ):
            got.append(value)
    assert info.value.reason == "timeout"
    _check(_flat(got), _expected([("burst", 2000, "a")], "json"))
    _clean(pool)


@pytest.mark.parametrize("mode", ["json", "pickle"])
def test_chunks_yielded_before_a_death_mid_burst_all_arrive(mode):
    steps = [("burst", 3000, "a"), ("big", MIB + 10), ("burst", 3000, "b"), ("v", b"raw"), ("burst", 500, "c"), ("exit",)]
    with Pool(Scripted, size=1, start_timeout=30) as pool:
        for _ in range(2):
            got: list[Encoded] = []
            with pytest.raises(SnakepitError) as info:
                for value in pool.stream("script", {"steps": steps}, encode=mode, batch=100):
                    got.append(value)
            assert info.value.reason == "worker_crashed"
            _check(_flat(got), _expected(steps, mode))
        _clean(pool)


def _run_all(*targets: Any) -> None:
    """Run each (function, args) on a thread of its own; raise the first error any raised."""
    errors: list[BaseException] = []

    def guarded(function: Any, args: tuple[Any, ...]) -> None:
        try:
            function(*args)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]


def test_a_threaded_worker_keeps_concurrent_batched_plain_and_unary_calls_apart():
    with Pool(Scripted, size=1, threads_per_worker=4, start_timeout=30) as pool:

        def batched(tag: str, mode: str, batch: int) -> None:
            steps = [
                ("burst", 3000, tag),
                ("v", b"raw"),
                ("big", 300_000),
                ("burst", 2000, tag),
                ("meta", 1, {"a": 1}),
                ("big", 3 * MIB),
            ]
            for _ in range(2):
                _check(_flat(list(pool.stream("script", {"steps": steps}, encode=mode, batch=batch))), _expected(steps, mode))

        def plain(tag: str) -> None:
            steps = [("burst", 3000, tag)]
            for _ in range(2):
                assert list(pool.stream("script", {"steps": steps})) == _expected(steps, "pickle")
                assert [value.data for value in pool.stream("script", {"steps": steps}, encode="json")] == [
                    f'"{tag}{i}"'.encode() for i in range(3000)
                ]
                assert pool.execute("add", {"a": 1}) == 2

        def leaving(tag: str) -> None:
            for stop in range(3):
                with pool.stream("script", {"steps": [("burst", 1_000_000, tag)]}, encode="json", batch=32) as stream:
                    for index, _ in enumerate(stream):
                        if index == 10 + stop:
                            break

        _run_all((batched, ("a", "json", 64)), (batched, ("b", "pickle", 5)), (plain, ("p",)), (leaving, ("l",)))
        _clean(pool)


def test_a_threaded_worker_dying_mid_burst_delivers_every_stream_s_chunks_before_it():
    with Pool(Scripted, size=1, threads_per_worker=3, start_timeout=30) as pool:
        seen: dict[str, tuple[str, list[Any]]] = {}

        def read(tag: str, mode: str, steps: list) -> None:
            got: list[Encoded] = []
            try:
                for value in pool.stream("script", {"steps": steps}, encode=mode, batch=50):
                    got.append(value)
            except SnakepitError as exc:
                seen[tag] = (exc.reason, _flat(got))
            else:
                seen[tag] = ("ended", _flat(got))

        _run_all(
            (read, ("o", "json", [("burst", 200_000, "o")])),
            (read, ("p", "pickle", [("burst", 200_000, "p")])),
            (read, ("v", "json", [("burst", 20_000, "v"), ("exit",)])),
        )
        assert seen["v"][0] == "worker_crashed"
        _check(seen["v"][1], _expected([("burst", 20_000, "v")], "json"))
        for tag in "op":
            got = seen[tag][1]
            assert got == [f"{tag}{i}" for i in range(len(got))]  # a prefix: none lost or repeated


def test_a_client_over_a_small_server_gets_every_chunk_split_to_fit():
    with Pool(Scripted, size=1, start_timeout=30) as pool:
        address = pool.serve("127.0.0.1:0", allow_pickle=True, max_message_mb=0.05).address
        with Client(address) as client:
            for mode in ("json", "pickle"):
                steps = [
                    ("burst", 5000, "a" * 30),
                    ("v", b"r" * 1000),
                    ("v", (1, 2)),
                    ("v", float("nan")),
                    ("burst", 3000, "b" * 20),
                ]
                if mode == "pickle":
                    steps += [("v", Opaque()), ("v", "lone \udc80")]
                steps += [("meta", 5, {"x": 1}), ("burst", 2000, "c"), ("final", "F")]
                got = list(client.stream("script", {"steps": steps}, encode=mode, batch=100_000))
                _check(_flat(got), _expected(steps, mode))
            got = []
            with pytest.raises(SnakepitError) as info:
                for value in client.stream(
                    "script", {"steps": [("burst", 3000, "a"), ("big", 60_000), ("burst", 10, "b")]}, encode="json", batch=100_000
                ):
                    got.append(value)
            assert info.value.reason == "serialization_error"  # larger than a message, alone
            _check(_flat(got), _expected([("burst", 3000, "a")], "json"))

"""One contract, two callers: every case here runs against an in-process ``Pool`` and against a
``snakepit.grpc.Client`` of such a pool served on 127.0.0.1, so the two cannot drift apart.

Errors are compared by class, ``category`` and ``reason`` (and the details a caller may rely on),
never by message text.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

pytest.importorskip("grpc")

from helpers import Toolbox

from snakepit import Pool, RemoteTraceback, SessionInfo, SnakepitError, StreamResult, ToolError, ValidationError
from snakepit.grpc import Client


@pytest.fixture(scope="module", params=["pool", "client"])
def caller(request):
    """What the cases call: a two-worker pool, or a client of one served on 127.0.0.1."""
    with Pool(Toolbox, size=2, start_timeout=30) as pool:
        if request.param == "pool":
            yield pool
            return
        server = pool.serve("127.0.0.1:0")
        try:
            with Client(server.address) as client:
                yield client
        finally:
            server.stop(grace=0)


def _kind(error: BaseException) -> tuple[type, str, str]:
    """The error's snakepit class (a tool's error is also an instance of the tool's exception
    class: see test_a_tools_exception_keeps_its_type), category and reason."""
    assert isinstance(error, SnakepitError), repr(error)
    family = next(k for k in type(error).__mro__ if k.__module__ == "snakepit" and "(" not in k.__qualname__)
    return family, error.category, error.reason


def test_a_tools_exception_keeps_its_type(caller):
    with pytest.raises(ValueError, match="typed") as info:
        caller.execute("fail", {"message": "typed"})
    error = info.value
    assert isinstance(error, ToolError) and error.args == ("typed",)
    assert isinstance(error.__cause__, RemoteTraceback) and "raise ValueError(message)" in str(error.__cause__)
    failed = list(caller.map("fail", [{"message": "in a map"}], return_exceptions=True))
    assert isinstance(failed[0], ValueError) and isinstance(failed[0], ToolError)


# -- map -------------------------------------------------------------------------------------------


def test_map_returns_every_result_in_order(caller):
    assert list(caller.map("add", [{"a": i, "b": 1} for i in range(50)])) == [i + 1 for i in range(50)]


def test_map_of_an_empty_input_is_empty(caller):
    assert list(caller.map("add", [])) == []


def test_map_unordered_gives_the_same_results(caller):
    results = list(caller.map("add", [{"a": i, "b": 1} for i in range(50)], ordered=False))
    assert sorted(results) == [i + 1 for i in range(50)]


@pytest.mark.parametrize(
    "chunksize, bound",
    [
        # The pool batches items, sized from its measured rate (up to 2048 an item batch, two
        # queued per worker): it may read that far ahead, but never the whole (endless) input.
        (None, 50_000),
        (4, 1_000),
    ],
)
def test_map_reads_its_input_lazily(caller, chunksize, bound):
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield {"a": i, "b": 1}

    results = caller.map("add", endless(), chunksize=chunksize)
    try:
        first = [next(results) for _ in range(3)]
    finally:
        results.close()  # leaves the map: its calls in flight are cancelled
    assert first == [1, 2, 3]
    assert 3 <= pulled < bound
    assert caller.execute("add", {"a": 1}) == 2  # the pool is still fine after leaving early


def test_map_with_return_exceptions_yields_each_error_at_its_position(caller):
    results = list(caller.map("add", [{"a": 1}, 5, {"a": "two"}, {"a": 3}], return_exceptions=True))
    assert len(results) == 4
    assert results[0] == 2 and results[3] == 4
    assert _kind(results[1]) == (ValidationError, "validation", "invalid_arguments")  # not a dict
    assert _kind(results[2]) == (ValidationError, "validation", "invalid_arguments")  # a str for an int

    failed = list(caller.map("fail", [{"message": "first"}, {"message": "second"}], return_exceptions=True))
    assert [_kind(error) for error in failed] == [(ToolError, "python_error", "tool_exception")] * 2
    assert [(error.details["type"], error.details["message"]) for error in failed] == [
        ("ValueError", "first"),
        ("ValueError", "second"),
    ]


def test_map_without_return_exceptions_raises_the_error_at_its_position(caller):
    with pytest.raises(SnakepitError) as info:
        list(caller.map("fail", [{"message": "nope"}]))
    assert _kind(info.value) == (ToolError, "python_error", "tool_exception")
    assert info.value.details["type"] == "ValueError" and info.value.details["message"] == "nope"

    results = caller.map("add", [{"a": 1}, 5, {"a": 3}])
    try:
        assert next(results) == 2  # what precedes the failing item arrives first
        with pytest.raises(SnakepitError) as info:
            next(results)
        assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")
    finally:
        results.close()


def test_map_reports_progress_to_a_callable(caller):
    calls: list[tuple[int, int | None]] = []
    results = list(caller.map("add", [{"a": i} for i in range(20)], progress=lambda done, total: calls.append((done, total))))
    assert results == [i + 1 for i in range(20)]
    assert calls and calls[-1] == (20, 20)
    assert all(total == 20 for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and 0 < done[0] <= 20


def test_map_of_an_unknown_tool_fails(caller):
    with pytest.raises(SnakepitError) as info:
        list(caller.map("no_such_tool", [{"a": 1}]))  # one side checks at once, the other when run
    assert _kind(info.value) == (ValidationError, "validation", "tool_not_found")


def test_map_of_an_unknown_tool_fails_even_without_items(caller):
    with pytest.raises(SnakepitError) as info:
        list(caller.map("no_such_tool", []))
    assert _kind(info.value) == (ValidationError, "validation", "tool_not_found")


def test_map_items_spend_their_timeout_running_not_queued(caller):
    """A map keeps no more items in flight than the pool runs at once: none waits in a queue,
    where its timeout (and queue_timeout) would run, so each item's timeout bounds its run."""
    results = list(caller.map("sleep", [{"seconds": 0.2}] * 12, timeout=1.0))
    assert results == [0.2] * 12


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_refuses_an_invalid_chunksize(caller, chunksize):
    with pytest.raises(SnakepitError) as info:
        list(caller.map("add", [{"a": 1}], chunksize=chunksize))
    assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")


@pytest.mark.parametrize("not_items", [5, "abc", {"a": 1}])
def test_map_refuses_an_input_that_is_not_an_iterable_of_items(caller, not_items):
    with pytest.raises(SnakepitError) as info:
        list(caller.map("add", not_items))  # pyright: ignore[reportArgumentType]  # on purpose
    assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")


# -- amap ------------------------------------------------------------------------------------------


def test_amap_returns_every_result_in_order(caller):
    async def main():
        return [result async for result in caller.amap("add", [{"a": i, "b": 1} for i in range(50)])]

    assert asyncio.run(main()) == [i + 1 for i in range(50)]


def test_amap_errors_as_map(caller):
    async def main():
        returned = [r async for r in caller.amap("add", [{"a": 1}, 5], return_exceptions=True)]
        with pytest.raises(SnakepitError) as info:
            [r async for r in caller.amap("fail", [{"message": "async"}])]
        return returned, info.value

    returned, raised = asyncio.run(main())
    assert returned[0] == 2 and _kind(returned[1]) == (ValidationError, "validation", "invalid_arguments")
    assert _kind(raised) == (ToolError, "python_error", "tool_exception") and raised.details["message"] == "async"


# -- streams ---------------------------------------------------------------------------------------


def test_a_stream_gives_its_chunks_their_metadata_and_its_result(caller):
    stream = caller.stream("with_final", {"n": 3})
    assert stream.result is None
    seen = [(chunk, stream.metadata) for chunk in stream]
    assert seen == [
        ({"i": 0}, {"seq": 0}),
        ({"i": 1}, {"seq": 1}),
        ({"i": 2}, {"seq": 2}),
        ({"done": True}, {"total": 3}),  # the tool's final chunk; what it yields after is dropped
    ]
    result = stream.result
    assert isinstance(result, StreamResult)
    assert result.metadata == {"total": 3}
    assert result.chunks == 4
    assert not result.synthetic_final and not result.halted
    assert isinstance(result.correlation_id, str) and result.correlation_id


def test_execute_stream_delivers_every_chunk_to_the_callback(caller):
    seen: list[dict] = []
    result = caller.execute_stream("count", {"n": 3}, seen.append)
    assert seen == [{"number": i, "is_last": i == 2} for i in range(3)]
    assert result.chunks == 3 and result.synthetic_final and not result.halted


# -- execute ---------------------------------------------------------------------------------------


def test_execute_add(caller):
    assert caller.execute("add", {"a": 2, "b": 3}) == 5
    assert caller.execute("add", {"a": 2}) == 3  # the default of b


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -7, 2**53, 1.5, -0.25, "", "héllo", [], [1, "a", None], {}, {"k": [1, {"n": 2.5}]}, b"", b"\x00\xff"],
    ids=repr,
)
def test_execute_echo_round_trips(caller, value):
    result = caller.execute("echo", {"value": value})
    assert result == value and type(result) is type(value)


def test_a_failing_tool_is_a_tool_error(caller):
    with pytest.raises(SnakepitError) as info:
        caller.execute("fail", {"message": "it broke"})
    assert _kind(info.value) == (ToolError, "python_error", "tool_exception")
    assert info.value.details["type"] == "ValueError"
    assert info.value.details["message"] == "it broke"


def test_an_unknown_tool_is_a_validation_error(caller):
    with pytest.raises(SnakepitError) as info:
        caller.execute("no_such_tool", {})
    assert _kind(info.value) == (ValidationError, "validation", "tool_not_found")


@pytest.mark.parametrize(
    "args",
    [{"a": "two"}, {"b": 1}, {"a": 1, "unexpected": 2}, [1, 2]],
    ids=["wrong-type", "missing", "unexpected", "not-a-dict"],
)
def test_a_bad_argument_is_a_validation_error(caller, args):
    with pytest.raises(SnakepitError) as info:
        caller.execute("add", args)
    assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")


# -- sessions --------------------------------------------------------------------------------------


def test_a_session_runs_calls_and_is_described_then_closed(caller):
    with caller.session("contract-s1") as session:
        assert session.execute("add", {"a": 1}) == 2
        info = caller.touch_session("contract-s1")
        assert isinstance(info, SessionInfo) and info.id == "contract-s1" and info.metadata == {}
        assert caller.close_session("contract-s1") is True
        assert caller.close_session("contract-s1") is False
        assert caller.touch_session("contract-s1") is None
    assert caller.touch_session("contract-s1") is None


def test_leaving_a_session_block_closes_it(caller):
    with caller.session("contract-s2") as session:
        assert session.execute("add", {"a": 2}) == 3
        assert isinstance(caller.touch_session("contract-s2"), SessionInfo)
    assert caller.touch_session("contract-s2") is None
    assert caller.close_session("contract-s2") is False


# -- keyword calls, param=, starmap ---------------------------------------------------------------


def test_tool_arguments_may_be_keywords(caller):
    assert caller.execute("add", a=2, b=5) == 7
    assert caller.execute("add", {"a": 2}) == 3
    assert [chunk["number"] for chunk in caller.stream("count", n=3)] == [0, 1, 2]
    seen: list = []
    result = caller.execute_stream("count", seen.append, n=2)
    assert [chunk["number"] for chunk in seen] == [0, 1] and result.chunks == 2
    seen.clear()
    caller.execute_stream("count", callback=seen.append, n=1)
    assert [chunk["number"] for chunk in seen] == [0]
    assert asyncio.run(caller.aexecute("add", a=1)) == 2


def test_a_dict_and_keywords_together_are_refused(caller):
    with pytest.raises(SnakepitError) as info:
        caller.execute("add", {"a": 1}, b=2)
    assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")


def test_a_parameter_named_like_an_option_goes_in_the_dict(caller):
    # 'timeout' as a keyword is the call's limit, never the tool's argument
    assert caller.execute("echo", {"value": "timeout"}, timeout=30) == "timeout"
    with pytest.raises(SnakepitError) as info:
        caller.execute("sleep", timeout=30)  # the tool's required 'seconds' is missing
    assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")


def test_map_with_param_passes_each_item_as_that_parameter(caller):
    assert list(caller.map("first", [[1, 2], [3]], param="items")) == [1, 3]
    assert list(caller.map("add", (a for a in range(3)), param="a")) == [1, 2, 3]
    with pytest.raises(SnakepitError) as info:
        caller.map("add", [1], param=7)
    assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")


def test_starmap_binds_each_tuple_in_parameter_order(caller):
    assert list(caller.starmap("add", [(1, 2), (3,), [4, 5]])) == [3, 4, 9]
    results = list(caller.starmap("add", [(1, 2, 3), 7, (1,)], return_exceptions=True))
    assert _kind(results[0]) == (ValidationError, "validation", "invalid_arguments")  # too many values
    assert _kind(results[1]) == (ValidationError, "validation", "invalid_arguments")  # not a tuple
    assert results[2] == 2
    with pytest.raises(SnakepitError) as info:
        caller.starmap("nope", [(1,)])
    assert _kind(info.value) == (ValidationError, "validation", "tool_not_found")


def test_map_takes_the_total_of_a_generator_for_its_progress(caller):
    seen: list = []
    items = ({"a": a} for a in range(5))
    assert list(caller.map("add", items, total=5, progress=lambda done, total: seen.append(total))) == [1, 2, 3, 4, 5]
    assert seen and set(seen) == {5}
    with pytest.raises(SnakepitError) as info:
        caller.map("add", [], total=-1)
    assert _kind(info.value) == (ValidationError, "validation", "invalid_arguments")

"""Calls against real workers: execute, execute_stream, stream, and their errors."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
from helpers import Point

from snakepit import HALT, Pool, SnakepitError, StreamResult


def test_execute_returns_result(pool):
    assert pool.execute("add", {"a": 1, "b": 2}) == 3
    assert pool.execute("add", {"a": 41}) == 42


def test_tool_name_and_description_options(pool):
    assert pool.execute("echo", {"value": [1, {"a": None}]}) == [1, {"a": None}]


def test_values_that_msgpack_would_change_round_trip_exactly(pool):
    for value in [
        (1, 2),
        {1, 2},
        frozenset({3}),
        b"bytes",
        bytearray(b"ba"),
        2**100,
        {(1, 2): "tuple key"},
        Point(1, 2),
        1.5,
        None,
    ]:
        back = pool.execute("echo", {"value": value})
        assert back == value and type(back) is type(value), value


def test_custom_object_results_are_pickled_back(pool):
    assert pool.execute("point", {"x": 1, "y": 2}) == Point(1, 2)
    assert pool.execute("huge_int") == 2**100


def test_arguments_are_converted_to_annotated_types(pool):
    assert pool.execute("pair", {"p": [2, 3], "scale": 2}) == (4.0, 6.0)
    assert pool.execute("kinds", {"value": (1,)}) == "tuple"


def test_var_keyword_tools_accept_extra_arguments(pool):
    assert pool.execute("kwargs", {"a": 1, "b": 2, "c": [3]}) == {"a": 1, "b": 2, "c": [3]}


@pytest.mark.parametrize(
    "args, fragment",
    [
        ({}, "missing required parameter `a`"),
        ({"a": "x"}, "parameter `a`"),
        ({"a": 1, "c": 3}, "unknown parameter `c`"),
        ({"a": True}, "parameter `a`"),
    ],
)
def test_invalid_arguments_name_the_parameter(pool, args, fragment):
    with pytest.raises(SnakepitError) as info:
        pool.execute("add", args)
    assert (info.value.category, info.value.reason) == ("validation", "invalid_arguments")
    assert fragment in info.value.message
    assert info.value.details["reason"] == "invalid_arguments"


def test_numpy_scalars_are_converted_for_typed_parameters(pool):
    """numpy scalars (``np.float64`` subclasses float, yet msgspec checks exact types) in typed
    arguments, nested in lists, tuples and dicts too, arrive as Python values; the worker's
    adapter module never imported numpy (unpickling the arguments does)."""
    np = pytest.importorskip("numpy")
    args = {
        "row": [np.float64(1.5), np.int64(2)],
        "counts": {np.str_("a"): np.int64(3)},
        "flags": (np.bool_(True), np.bool_(False)),
        "label": np.str_("x"),
    }
    received = pool.execute("typed_containers", args)
    assert received == [["float", 1.5], ["float", 2.0], ["str", "a"], ["int", 3], ["bool", True], ["bool", False], ["str", "x"]]
    assert pool.execute("add", {"a": np.int64(2), "b": np.uint8(3)}) == 5
    assert pool.execute("typed_kinds", {"text": "t", "number": np.float32(0.5)}) == ["str", "float", 0.5]


def test_an_array_for_a_list_parameter_is_refused_with_a_hint(pool):
    np = pytest.importorskip("numpy")
    with pytest.raises(SnakepitError) as info:
        pool.execute("typed_containers", {"row": np.arange(3.0)})
    assert info.value.reason == "invalid_arguments"
    message = info.value.message
    assert "parameter `row`" in message and "numpy.ndarray" in message and "`.tolist()`" in message
    assert pool.execute("typed_containers", {"row": np.arange(2.0).tolist()}) == [["float", 0.0], ["float", 1.0], ["str", ""]]


def test_an_array_for_an_ndarray_parameter_is_received_as_is():
    np = pytest.importorskip("numpy")
    with Pool("numpy_args:Arrays", size=1) as pool:
        assert pool.execute("total", {"values": np.arange(4.0), "scale": np.float64(2)}) == ["ndarray", 12.0]


def test_arguments_still_invalid_after_numpy_conversion_keep_their_message(pool):
    np = pytest.importorskip("numpy")
    for args, message in [
        # still wrong once the numpy scalars are Python's: the error is the one found first
        ({"row": ["x", np.float64(1)]}, "parameter `row[0]`: Expected `float`, got `str`"),
        # the first error was a numpy scalar's: the one left is reported, as for Python values
        ({"row": [np.float64(1)], "flags": ["no"]}, "parameter `flags[0]`: Expected `bool`, got `str`"),
        ({"row": [np.float64(1)], "label": np.float64(2)}, "parameter `label`: Expected `str`, got `float`"),
    ]:
        with pytest.raises(SnakepitError) as info:
            pool.execute("typed_containers", args)
        assert info.value.reason == "invalid_arguments"
        assert info.value.message == f"invalid arguments for 'typed_containers': {message}"


def test_args_must_be_a_mapping(pool):
    with pytest.raises(SnakepitError) as info:
        pool.execute("add", [1, 2])
    assert info.value.reason == "invalid_arguments"


def test_unknown_tool(pool):
    with pytest.raises(SnakepitError) as info:
        pool.execute("nope")
    assert (info.value.category, info.value.reason) == ("validation", "tool_not_found")


def test_tool_exception_carries_worker_traceback(pool):
    with pytest.raises(SnakepitError) as info:
        pool.execute("fail", {"message": "bad input"})
    err = info.value
    assert (err.category, err.reason) == ("python_error", "tool_exception")
    assert err.details["type"] == "ValueError" and err.details["message"] == "bad input"
    assert "raise ValueError(message)" in err.traceback and "helpers.py" in err.traceback
    assert "worker_process.py" not in err.traceback


def test_unserializable_argument_names_its_type(pool):
    with pytest.raises(SnakepitError) as info:
        pool.execute("echo", {"value": {"inner": threading.Lock()}})
    err = info.value
    assert (err.category, err.reason) == ("validation", "serialization_error")
    assert "lock" in err.message and err.details["path"] == "$['value']['inner']"


def test_unserializable_result_is_an_error_and_the_worker_survives(pool):
    pids = {pool.execute("state")["pid"] for _ in range(4)}
    with pytest.raises(SnakepitError) as info:
        pool.execute("unserializable_result")
    assert info.value.reason == "serialization_error" and "lock" in info.value.message
    assert {pool.execute("state")["pid"] for _ in range(4)} == pids


def test_result_that_cannot_be_loaded_in_the_owner(pool):
    with pytest.raises(SnakepitError) as info:
        pool.execute("unloadable_result")
    assert info.value.reason == "serialization_error"
    assert "refuses to be unpickled" in info.value.message
    assert pool.execute("add", {"a": 1}) == 2


def test_large_values_travel_both_ways(pool):
    payload = b"y" * (30 << 20)
    assert pool.execute("echo", {"value": payload}) == payload
    assert len(pool.execute("big", {"size": 50 << 20})) == 50 << 20


# -- streams ----------------------------------------------------------------------------------


def test_execute_stream_delivers_chunks_in_order(pool):
    seen = []
    result = pool.execute_stream("count", {"n": 5}, seen.append)
    assert [c["number"] for c in seen] == [0, 1, 2, 3, 4]
    assert isinstance(result, StreamResult)
    assert result.chunks == 5 and result.synthetic_final and not result.halted
    assert result.worker_id in {w["id"] for w in pool.stats()["worker_info"]}
    assert result.execution_time_ms > 0


def test_many_chunks_arrive_complete_and_ordered(pool):
    numbers = []
    result = pool.execute_stream("count", {"n": 100_000}, lambda c: numbers.append(c["number"]))
    assert result.chunks == 100_000 and numbers == list(range(100_000))


def test_mutated_and_reyielded_dict_is_captured_at_each_yield(pool):
    assert [c["i"] for c in pool.stream("reuse_dict", {"n": 5})] == [0, 1, 2, 3, 4]


def test_stream_chunk_final_and_metadata(pool):
    seen = []
    result = pool.execute_stream("with_final", {"n": 2}, seen.append)
    assert seen == [{"i": 0}, {"i": 1}, {"done": True}]
    assert result.chunks == 3 and not result.synthetic_final
    assert result.metadata == {"total": 2}


def test_execute_on_a_streaming_tool_returns_all_chunks(pool):
    assert pool.execute("count", {"n": 3}) == [
        {"number": 0, "is_last": False},
        {"number": 1, "is_last": False},
        {"number": 2, "is_last": True},
    ]
    assert pool.execute("with_final", {"n": 1}) == [{"i": 0}, {"done": True}]


def test_iterable_returning_tool_streams(pool):
    assert list(pool.stream("iterable", {"n": 4})) == [0, 1, 2, 3]


def test_stream_on_non_streaming_tool(pool):
    for call in (
        lambda: pool.execute_stream("add", {"a": 1}, print),
        lambda: pool.stream("add", {"a": 1}),
        lambda: pool.stream("not_a_stream"),
    ):
        with pytest.raises(SnakepitError) as info:
            call()
        assert (info.value.category, info.value.reason) == ("validation", "not_streaming")
    assert pool.execute("not_a_stream", {"n": 2}) == [0, 1]


def test_non_plain_chunks_round_trip(pool):
    values = [(1, 2), {3}, Point(0, 1), b"raw", {"nested": (1, [2, (3,)])}]
    assert list(pool.stream("stream_values", {"values": values})) == values


def test_halt_ends_stream_and_closes_generator_before_next_call(single_pool):
    before = single_pool.execute("state")["closed_streams"]
    seen = []

    def take_three(chunk):
        seen.append(chunk)
        return HALT if len(seen) == 3 else None

    result = single_pool.execute_stream("guarded", {}, take_three)
    assert seen == [0, 1, 2]
    assert result.halted and result.chunks == 3 and result.synthetic_final
    # One worker: the next call runs only after the generator's finally has run.
    assert single_pool.execute("state")["closed_streams"] == before + 1


def test_callback_exception_propagates_unchanged_and_cancels(single_pool):
    before = single_pool.execute("state")["closed_streams"]

    class Stop(Exception):
        pass

    def explode(chunk):
        if chunk == 2:
            raise Stop("from the callback")

    with pytest.raises(Stop, match="from the callback"):
        single_pool.execute_stream("guarded", {}, explode)
    assert single_pool.execute("state")["closed_streams"] == before + 1


def test_iterator_early_exit_cancels(single_pool):
    before = single_pool.execute("state")["closed_streams"]
    with single_pool.stream("guarded") as chunks:
        for chunk in chunks:
            if chunk == 5:
                break
    assert chunks.result is None
    assert single_pool.execute("state")["closed_streams"] == before + 1


def test_iterator_close_and_garbage_collection_cancel(single_pool):
    before = single_pool.execute("state")["closed_streams"]
    stream = single_pool.stream("guarded")
    assert next(stream) == 0
    stream.close()
    stream = single_pool.stream("guarded")
    assert next(stream) == 0
    del stream
    gc.collect()
    assert single_pool.execute("state")["closed_streams"] == before + 2


def test_a_streams_metadata_is_that_of_the_chunk_delivered_last(pool):
    """StreamChunk(data, metadata=...): iterating, ``stream.metadata`` is the tool's dict for the
    chunk just delivered, None for a chunk without; the final one's is the result's too."""
    seen = []
    with pool.stream("with_final", {"n": 3, "extra_after_final": False}) as stream:
        for data in stream:
            seen.append((data, stream.metadata))
    assert seen == [({"i": 0}, {"seq": 0}), ({"i": 1}, {"seq": 1}), ({"i": 2}, {"seq": 2}), ({"done": True}, {"total": 3})]
    assert stream.result.metadata == {"total": 3}
    with pool.stream("count", {"n": 2}) as plain:
        assert [(c["number"], plain.metadata) for c in plain] == [(0, None), (1, None)]

    async def main() -> list:
        got = []
        async with pool.astream("with_final", {"n": 2, "extra_after_final": False}) as stream:
            async for data in stream:
                got.append((data, stream.metadata))
        return got

    assert asyncio.run(main()) == [({"i": 0}, {"seq": 0}), ({"i": 1}, {"seq": 1}), ({"done": True}, {"total": 2})]


def test_exhausted_iterator_has_result(pool):
    with pool.stream("count", {"n": 3}) as chunks:
        assert [c["number"] for c in chunks] == [0, 1, 2]
    assert chunks.result.chunks == 3 and not chunks.result.halted


def test_cancelling_a_slow_generator_waits_for_it_off_the_callers_thread(single_pool):
    """HALT returns at once even while the generator is between yields."""
    before = single_pool.execute("state")["closed_streams"]
    started = time.monotonic()
    result = single_pool.execute_stream("guarded", {"delay": 3.0}, lambda c: HALT)
    assert time.monotonic() - started < 3.0 + 2.5  # one delay for the first chunk, none (3 s more) for the cancel
    assert result.halted
    assert single_pool.execute("state")["closed_streams"] == before + 1


def test_chunks_arrive_as_produced(pool):
    """A chunk followed by two seconds of CPU-bound work arrives before that work ends."""
    arrivals = []
    started = time.monotonic()
    pool.execute_stream("yield_then_work", {"seconds": 3.0}, lambda c: arrivals.append(time.monotonic() - started))
    assert len(arrivals) == 2
    assert arrivals[0] < 2.0 and arrivals[1] >= 3.0


def test_chunks_of_a_fast_burst_followed_by_work_arrive_before_the_work_ends(pool):
    arrivals = []
    started = time.monotonic()
    for _chunk in pool.stream("stream_values", {"values": list(range(50))}):
        arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 50 and arrivals[-1] < 1.0


def test_stream_failure_after_chunks(pool):
    seen = []
    with pytest.raises(SnakepitError) as info:
        pool.execute_stream("stream_then_fail", {"n": 3}, seen.append)
    assert seen == [0, 1, 2]
    assert info.value.reason == "tool_exception" and "failed after 3" in info.value.message
    with pytest.raises(SnakepitError):
        list(pool.stream("stream_then_fail", {"n": 2}))


def test_callback_must_be_callable(pool):
    with pytest.raises(SnakepitError) as info:
        pool.execute_stream("count", {"n": 1}, None)
    assert info.value.reason == "invalid_arguments"


def test_many_threads_share_one_pool(pool):
    errors: list[BaseException] = []
    results: dict[int, int] = {}

    def caller(i: int) -> None:
        try:
            results[i] = pool.execute("add", {"a": i, "b": i})
            got = [c["number"] for c in pool.stream("count", {"n": 20})]
            assert got == list(range(20))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert results == {i: 2 * i for i in range(16)}


def test_timeout_on_a_plain_call(pool):
    started = time.monotonic()
    with pytest.raises(SnakepitError) as info:
        pool.execute("sleep", {"seconds": 5.0}, timeout=0.1)
    assert (info.value.category, info.value.reason, info.value.details["stage"]) == ("timeout", "timeout", "running")
    assert time.monotonic() - started < 2.0  # at its deadline, not when the tool ends (5 s)
    assert pool.execute("add", {"a": 1}) == 2


def test_closing_a_stream_from_another_thread_ends_its_iteration_at_once():
    import threading

    from helpers import Toolbox

    from snakepit import Pool

    with Pool(Toolbox, size=1, timeout=30) as pool:
        stream = pool.stream("count", {"n": 1000, "delay": 0.05})
        threading.Timer(0.5, stream.close).start()
        started = time.monotonic()
        got = list(stream)  # ends at the close, not at the call's timeout
        assert 0 < len(got) < 1000 and time.monotonic() - started < 10
        stream = pool.stream("count", {"n": 1000})
        assert next(stream) == {"number": 0, "is_last": False}
        stream.close()
        with pytest.raises(StopIteration):  # nothing more after a close, buffered or not
            next(stream)
        assert pool.execute("add", {"a": 1}) == 2
        stats = pool.stats()
        assert stats["timeouts"] == 0 and stats["errors"] == 0 and stats["restarts"] == 0


def test_leaving_a_loop_early_cancels_a_stream_still_referenced():
    """A `for` loop calls nothing on its iterator at `break`: the stream's iterator is a
    generator of its own that only the loop holds, so dropping it cancels the call."""
    from helpers import Faulty, wait_for

    with Pool(Faulty, size=1) as pool:
        stream = pool.stream("guarded", {"delay": 0.01})
        for _ in stream:
            break
        wait_for(lambda: pool.execute("closed") == 1)  # the tool's finally ran, though `stream` lives on
        assert list(stream) == [] and stream.result is None  # a second loop sees it cancelled

        def leave_by_exception() -> None:
            for _ in pool.stream("guarded", {"delay": 0.01}):
                raise KeyError("leave")

        with pytest.raises(KeyError):
            leave_by_exception()
        wait_for(lambda: pool.execute("closed") == 2)
        with pool.session("s") as session:
            held = session.stream("guarded", {"delay": 0.01})
            for _ in held:
                break
            wait_for(lambda: pool.execute("closed") == 3)
        assert pool.stats()["busy"] == 0


def test_a_stream_iterated_again_after_its_end_or_its_error_yields_nothing():
    """Its worker serves other calls by then (or is gone, its pipes closed): a stream that has
    ended never waits on it again, as a generator that returned or raised yields nothing more."""
    import os
    import signal

    from helpers import Toolbox

    with Pool(Toolbox, size=1) as pool:
        ended = pool.stream("count", {"n": 3})
        assert len(list(ended)) == 3
        other = pool.stream("count", {"n": 3})  # the same worker, another call
        assert next(other)["number"] == 0
        assert list(ended) == [] and next(ended, "nothing") == "nothing"  # none of the other's chunks
        assert [c["number"] for c in other] == [1, 2]
        failed = pool.stream("stream_then_fail", {"n": 2})
        with pytest.raises(SnakepitError):
            list(failed)
        assert list(failed) == []
        killed = pool.stream("count", {"n": 100_000, "delay": 0.01})
        next(killed)
        os.kill(pool.stats()["worker_info"][0]["pid"], signal.SIGKILL)
        with pytest.raises(SnakepitError) as info:
            list(killed)
        assert info.value.reason == "worker_crashed"
        assert list(killed) == []  # not an OSError from the dead worker's closed pipes

        async def async_twins() -> None:
            stream = pool.astream("count", {"n": 2})
            assert len([c async for c in stream]) == 2 and [c async for c in stream] == []
            failing = pool.astream("stream_then_fail", {"n": 1})
            with pytest.raises(SnakepitError):
                [c async for c in failing]
            assert [c async for c in failing] == []

        import asyncio

        asyncio.run(async_twins())


def test_arguments_of_the_wrong_type_are_snakepit_errors(pool):
    """A tool name or a session id of the wrong type is invalid_arguments, never a TypeError."""
    for call in (
        lambda: pool.execute(["add"]),
        lambda: list(pool.map(["add"], [{"a": 1}])),
        lambda: pool.touch_session(["a"]),
        lambda: pool.touch_session(""),
        lambda: pool.close_session(None),
        lambda: pool.subscribe(3),
        lambda: pool.map("add", [{"a": 1}], chunksize=0),
    ):
        with pytest.raises(SnakepitError) as info:
            call()
        assert info.value.reason == "invalid_arguments", info.value


def test_a_streams_result_metadata_is_the_final_chunks_only(pool):
    """Per-chunk metadata is the stream's (.metadata); the result's is the final chunk's: None
    when the stream had no final chunk, whatever earlier chunks carried."""
    with pool.stream("with_final", {"n": 2, "extra_after_final": False}) as stream:
        list(stream)
    assert stream.result.metadata == {"total": 2}

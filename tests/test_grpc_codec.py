"""The bridge protocol's value rules, as pure logic: parameters in, results and chunks out,
errors as statuses and JSON."""

from __future__ import annotations

import dataclasses
import enum
import pickle

import pytest

pytest.importorskip("grpc")

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from hypothesis import given
from hypothesis import strategies as st

from snakepit import SnakepitError
from snakepit._errors import Category, Reason, build_error
from snakepit.grpc import _codec as codec
from snakepit.grpc import _status as status


def _param(type_name: str, json_text: str) -> AnyMessage:
    return AnyMessage(type_url=codec.TYPE_PREFIX + type_name, value=json_text.encode())


def test_parameters_are_json_whatever_the_type_says():
    params = {"a": _param("integer", "1"), "b": _param("anything", '{"x": [1, 2.5, null]}'), "c": _param("string", '"hi"')}
    assert codec.decode_parameters(params, {}, {}, allow_pickle=False) == {"a": 1, "b": {"x": [1, 2.5, None]}, "c": "hi"}


def test_binary_parameters_are_bytes_and_pickles_need_permission():
    params = {"blob": _param("bytes.binary", "null")}
    assert codec.decode_parameters(params, {"blob": b"\x00\xff"}, {}, allow_pickle=False) == {"blob": b"\x00\xff"}
    assert codec.decode_parameters({}, {"raw": b"x"}, {}, allow_pickle=False) == {"raw": b"x"}
    pickled = {"obj": pickle.dumps((1, 2))}
    meta = {"binary_format:obj": "pickle"}
    with pytest.raises(codec.PickleRefused) as info:
        codec.decode_parameters({}, pickled, meta, allow_pickle=False)
    assert status.status_of(info.value) == grpc.StatusCode.PERMISSION_DENIED
    assert codec.decode_parameters({}, pickled, meta, allow_pickle=True) == {"obj": (1, 2)}


@pytest.mark.parametrize("params, binary", [({"a": _param("integer", "{not json")}, {}), ({"a": _param("x.binary", "null")}, {})])
def test_undecodable_parameters_are_invalid_arguments(params, binary):
    with pytest.raises(SnakepitError) as info:
        codec.decode_parameters(params, binary, {}, allow_pickle=False)
    assert (info.value.category, info.value.reason) == ("validation", "invalid_arguments")
    assert status.status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_what_json_carries_exactly_travels_as_json(value):
    data, content_type = codec.encode_value(value, accept_pickle=True)
    assert content_type == codec.JSON
    assert codec.decode_value(data, content_type) == value


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    "value, converted",
    [
        ((1, 2), [1, 2]),
        (frozenset({3}), [3]),
        (Point(1, 2), {"x": 1, "y": 2}),
        (Color.RED, "red"),
        (2**60, 2**60),
        ([b"\x00"], ["AA=="]),
    ],
)
def test_other_values_are_pickled_when_asked_else_converted(value, converted):
    data, content_type = codec.encode_value(value, accept_pickle=True)
    assert content_type == codec.PICKLE and codec.decode_value(data, content_type) == value
    data, content_type = codec.encode_value(value, accept_pickle=False)
    assert content_type == codec.JSON and codec.decode_value(data, content_type) == converted


def test_numpy_values_convert_with_the_documented_default():
    numpy = pytest.importorskip("numpy")
    data, content_type = codec.encode_value(numpy.arange(3), accept_pickle=False)
    assert codec.decode_value(data, content_type) == [0, 1, 2]


def test_bytes_travel_raw_and_what_has_no_form_is_a_serialization_error():
    assert codec.encode_value(b"\x01", accept_pickle=False) == (b"\x01", codec.OCTETS)
    import threading

    with pytest.raises(SnakepitError) as info:
        codec.encode_value(threading.Lock(), accept_pickle=True)
    assert info.value.reason == "serialization_error" and "lock" in info.value.message


@pytest.mark.parametrize(
    "reason, code",
    [
        (Reason.TOOL_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (Reason.INVALID_ARGUMENTS, grpc.StatusCode.INVALID_ARGUMENT),
        (Reason.NOT_STREAMING, grpc.StatusCode.UNIMPLEMENTED),
        (Reason.POOL_SATURATED, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Reason.SESSION_QUOTA_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Reason.WORKER_BUSY, grpc.StatusCode.UNAVAILABLE),
        (Reason.SESSION_WORKER_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (Reason.POOL_CLOSED, grpc.StatusCode.UNAVAILABLE),
        (Reason.TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
        (Reason.QUEUE_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
        (Reason.TOOL_EXCEPTION, grpc.StatusCode.INTERNAL),
        (Reason.WORKER_CRASHED, grpc.StatusCode.INTERNAL),
    ],
)
def test_each_reason_has_its_status_and_the_json_rebuilds_the_error(reason, code):
    category = {Reason.TOOL_EXCEPTION: Category.PYTHON_ERROR, Reason.WORKER_CRASHED: Category.WORKER}.get(reason, "x")
    error = build_error(category, reason, "what happened \u2013 in detail", {"type": "ValueError", "n": 1}, "Traceback...")
    assert status.status_of(error) == code
    text = status.error_json(error)
    assert text.isascii()  # fit for metadata
    rebuilt = status.error_from_json(text)
    assert isinstance(rebuilt, type(error))
    if reason == Reason.TOOL_EXCEPTION:  # a tool's error is also one of the tool's exception's class
        assert isinstance(rebuilt, ValueError)
    assert (rebuilt.category, rebuilt.reason, rebuilt.message, rebuilt.traceback) == (
        error.category,
        error.reason,
        error.message,
        error.traceback,
    )
    assert rebuilt.details == error.details

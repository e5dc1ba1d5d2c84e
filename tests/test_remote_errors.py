"""A tool's exception reaches the caller as its own type, with its attributes and the worker's frames."""

from __future__ import annotations

import errno
import pickle
import subprocess
import sys
import traceback

import pytest

import snakepit
from snakepit import BaseAdapter, Pool, ToolError, tool


class NeedsTwo(ValueError):
    """Will not unpickle: its __init__ takes two arguments, its args hold one."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")
        self.a = a


class Registered(Exception):
    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("no subclasses")


class WithState(Exception):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message, code)
        self.code = code


class Raiser(BaseAdapter):
    @tool
    def boom(self, kind: str) -> int:
        if kind == "value":
            raise ValueError("bad value")
        if kind == "key":
            raise KeyError("the-key")
        if kind == "os":
            raise FileNotFoundError(errno.ENOENT, "no such file", "/nowhere")
        if kind == "process":
            raise subprocess.CalledProcessError(3, ["false"])
        if kind == "needs_two":
            raise NeedsTwo(1, 2)
        if kind == "state":
            raise WithState("stateful", code=7)
        if kind == "registered":
            raise Registered("refuses subclasses")
        if kind == "stop":
            raise StopIteration("escaped")
        if kind == "ours":
            raise snakepit.ValidationError("validation", "invalid_arguments", "from the tool")
        if kind == "worker_only":
            import worker_only_errors

            raise worker_only_errors.OnlyInWorkers("unknown here")
        return 0

    @tool
    def count_then_fail(self, n: int):
        yield from range(n)
        raise ValueError(f"after {n}")

    @tool
    def half(self, x: int) -> float:
        if x % 2:
            raise ArithmeticError(f"odd {x}")
        return x / 2


@pytest.fixture(scope="module")
def pool():
    with Pool(Raiser, size=1) as pool:
        yield pool


def raised(pool: Pool, kind: str) -> ToolError:
    with pytest.raises(ToolError) as info:
        pool.execute("boom", {"kind": kind})
    return info.value


def test_the_error_is_an_instance_of_the_tools_exception_class(pool):
    error = raised(pool, "value")
    assert isinstance(error, ValueError) and isinstance(error, ToolError)
    assert (error.category, error.reason) == ("python_error", "tool_exception")
    assert error.args == ("bad value",)
    assert str(error) == "[python_error/tool_exception] tool 'boom' raised ValueError: bad value"
    with pytest.raises(ValueError, match="bad value"):  # the way a caller catches it
        pool.execute("boom", {"kind": "value"})
    assert type(raised(pool, "value")) is type(error)  # the derived class is made once


def test_its_cause_is_the_workers_traceback(pool):
    error = raised(pool, "value")
    cause = error.__cause__
    assert isinstance(cause, snakepit.RemoteTraceback)
    assert 'raise ValueError("bad value")' in str(cause) and __file__ in str(cause)
    assert "host.py" not in str(cause) and "_adapter.py" not in str(cause)  # the tool's frames only
    printed = "".join(traceback.format_exception(error))
    assert printed.index('raise ValueError("bad value")') < printed.index("direct cause")


def test_attributes_come_from_the_original_exception(pool):
    key = raised(pool, "key")
    assert isinstance(key, KeyError) and key.args == ("the-key",)
    missing = raised(pool, "os")
    assert isinstance(missing, FileNotFoundError)
    assert (missing.errno, missing.strerror, missing.filename) == (errno.ENOENT, "no such file", "/nowhere")
    process = raised(pool, "process")
    assert isinstance(process, subprocess.CalledProcessError)
    assert (process.returncode, process.cmd) == (3, ["false"])
    state = raised(pool, "state")
    assert isinstance(state, WithState) and state.code == 7 and state.args == ("stateful", 7)


def test_an_exception_that_will_not_unpickle_keeps_its_type_and_our_fields(pool):
    error = raised(pool, "needs_two")
    assert isinstance(error, NeedsTwo)
    assert error.args == (error.message,)
    assert error.details["type"] == f"{__name__}.NeedsTwo" and error.details["message"] == "1-2"
    with pytest.raises(AttributeError):
        error.a  # noqa: B018 (the original's attribute, which did not travel)


@pytest.mark.parametrize("kind", ["stop", "ours", "registered", "worker_only"])
def test_what_cannot_or_must_not_be_typed_is_a_plain_tool_error(pool, kind):
    assert "worker_only_errors" not in sys.modules  # nothing is imported for this
    error = raised(pool, kind)
    assert type(error) is ToolError
    assert error.args == (error.message,)
    assert isinstance(error.__cause__, snakepit.RemoteTraceback)


def test_a_pickled_copy_is_a_plain_tool_error(pool):
    error = raised(pool, "os")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ToolError and copy.to_dict() == error.to_dict()


def test_streams_and_maps_raise_typed_errors_too(pool):
    seen = []
    with pytest.raises(ValueError, match="after 2") as info:
        for item in pool.stream("count_then_fail", {"n": 2}):
            seen.append(item)
    assert seen == [0, 1] and isinstance(info.value, ToolError)
    results = list(pool.map("half", [{"x": x} for x in range(4)], return_exceptions=True))
    assert results[0] == 0 and results[2] == 1
    assert isinstance(results[1], ArithmeticError) and isinstance(results[1], ToolError)
    assert isinstance(results[1].__cause__, snakepit.RemoteTraceback)
    with pytest.raises(ArithmeticError, match="odd 1"):
        list(pool.map("half", [{"x": 0}, {"x": 1}]))


def test_frames_of_an_adapter_sent_by_value_name_their_file_and_source():
    class Local(BaseAdapter):  # a local class travels by value: cloudpickle names its code <dynamic-code>
        @tool
        def fail(self) -> None:
            raise RuntimeError("from a local adapter")

    with Pool(Local, size=1) as pool, pytest.raises(RuntimeError) as info:
        pool.execute("fail")
    text = str(info.value.__cause__)
    assert "<dynamic-code>" not in text
    assert f'File "{__file__}"' in text and 'raise RuntimeError("from a local adapter")' in text
    assert info.value.traceback.rstrip() == info.value.__cause__.text.rstrip()  # the error says the same

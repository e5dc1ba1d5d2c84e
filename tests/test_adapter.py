"""Tool discovery, specs and argument checking, on adapter instances in this process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from snakepit import BaseAdapter, SnakepitError, StreamChunk, tool
from snakepit._adapter import discover_tools


@dataclass
class Box:
    width: int
    height: int


class Sample(BaseAdapter):
    @tool
    def plain(self, a: int, b: float = 2.5, *, label: str = "x") -> float:
        """Multiply.

        More words that are not the description.
        """
        return a * b

    @tool(name="renamed", description="explicit", supports_streaming=True)
    def listing(self, n: int):
        return iter(range(n))

    @tool
    def gen(self, n: int = 3):
        yield from range(n)

    @tool
    def optional(self, value: int | None = None, items: list[int] = [1, 2]) -> Any:  # noqa: B006
        return value, items

    @tool
    def boxed(self, box: Box) -> int:
        return box.width * box.height

    @tool
    def untyped(self, anything, other=None):
        return anything

    @tool
    def extra(self, a: int, **rest: Any) -> dict:
        return rest

    @tool
    def unsupported(self, fn: callable) -> Any:
        return fn

    def not_a_tool(self) -> None:
        pass


@pytest.fixture
def tools():
    return discover_tools(Sample())


def test_only_marked_methods_are_tools(tools):
    assert set(tools) == {"plain", "renamed", "gen", "optional", "boxed", "untyped", "extra", "unsupported"}


def test_spec_from_introspection(tools):
    spec = tools["plain"].spec
    assert spec.description == "Multiply." and not spec.supports_streaming
    assert [(p.name, p.type, p.required, p.default) for p in spec.parameters] == [
        ("a", "int", True, None),
        ("b", "float", False, 2.5),
        ("label", "str", False, "x"),
    ]
    assert tools["renamed"].spec.description == "explicit" and tools["renamed"].spec.supports_streaming
    assert tools["gen"].spec.supports_streaming and tools["gen"].is_generator
    assert [p.type for p in tools["untyped"].spec.parameters] == ["any", "any"]
    assert tools["optional"].spec.parameters[1].default == "[1, 2]"  # not plain: shown as repr


def test_bind_checks_and_converts(tools):
    assert tools["plain"].bind({"a": 2}) == {"a": 2, "b": 2.5, "label": "x"}  # immutable defaults filled in
    assert tools["plain"].bind({"a": 2, "b": 3, "label": "y"}) == {"a": 2, "b": 3.0, "label": "y"}
    assert tools["boxed"]._positional and not tools["plain"]._positional  # keyword-only: by name
    assert tools["boxed"].bind({"box": {"width": 2, "height": 3}}) == {"box": Box(2, 3)}
    assert tools["boxed"].bind({"box": Box(1, 1)}) == {"box": Box(1, 1)}
    assert tools["optional"].bind({"value": None}) == {"value": None}  # mutable default left out
    assert tools["untyped"].bind({"anything": (1, 2)}) == {"anything": (1, 2), "other": None}
    assert tools["extra"].bind({"a": 1, "z": 2}) == {"a": 1, "z": 2}
    assert tools["unsupported"].bind({"fn": print}) == {"fn": print}


def test_omitted_defaults_are_the_functions_own(tools):
    bound = tools["optional"]
    first = bound.func(**bound.bind({}))
    second = bound.func(**bound.bind({}))
    assert first == (None, [1, 2]) and first[1] is second[1]  # the very default object, as Python does


@pytest.mark.parametrize(
    "tool_name, args, fragment",
    [
        ("plain", {}, "missing required parameter `a`"),
        ("plain", {"a": 1, "nope": 1}, "unknown parameter `nope`"),
        ("plain", {"a": "1"}, "parameter `a`: Expected `int`, got `str`"),
        ("plain", {"a": 1, "label": 3}, "parameter `label`"),
        ("boxed", {"box": {"width": 1}}, "height"),
        ("optional", {"items": [1, "x"]}, "parameter `items[1]`"),
        ("plain", [1], "must be a dict"),
    ],
)
def test_bind_errors_name_the_parameter(tools, tool_name, args, fragment):
    with pytest.raises(SnakepitError) as info:
        tools[tool_name].bind(args)
    assert (info.value.category, info.value.reason) == ("validation", "invalid_arguments")
    assert fragment in info.value.message, info.value.message


def test_numpy_scalars_get_a_second_check_as_python_values(tools):
    np = pytest.importorskip("numpy")
    bound = tools["plain"].bind({"a": np.int16(2), "b": np.float32(0.5), "label": np.str_("y")})
    assert bound == {"a": 2, "b": 0.5, "label": "y"} and [type(v) for v in bound.values()] == [int, float, str]
    assert tools["optional"].bind({"items": (np.int64(1), 2)}) == {"value": None, "items": [1, 2]}
    extra = tools["extra"].bind({"a": np.int64(1), "z": np.int64(2)})
    assert type(extra["a"]) is int and type(extra["z"]) is np.int64  # **kwargs are not checked: left as given
    batch = tools["boxed"].convert_many([{"box": {"width": np.int64(2), "height": 3}}, {"box": Box(1, 1)}])
    assert [b.box for b in batch] == [Box(2, 3), Box(1, 1)]
    looped: list = [np.float64(1)]
    looped.append(looped)  # a list holding itself: refused as before, not a RecursionError
    with pytest.raises(SnakepitError, match="parameter `items"):
        tools["optional"].bind({"items": looped})


def test_duplicate_tool_names_are_refused():
    class Twice(BaseAdapter):
        @tool(name="same")
        def one(self):
            pass

        @tool(name="same")
        def two(self):
            pass

    with pytest.raises(TypeError, match="twice"):
        discover_tools(Twice())


def test_tool_decorator_keeps_the_method_callable():
    class Direct(BaseAdapter):
        @tool
        def double(self, x: int) -> int:
            return 2 * x

    assert Direct().double(4) == 8


def test_stream_chunk_defaults():
    chunk = StreamChunk({"a": 1})
    assert chunk.data == {"a": 1} and not chunk.is_final and chunk.metadata is None


def test_a_class_that_is_not_an_adapter_is_refused_at_once():
    from snakepit import Pool, ValidationError, tool

    class NotAnAdapter:
        @tool
        def f(self) -> int:
            return 1

    with pytest.raises(ValidationError) as info:
        Pool(NotAnAdapter, size=1)
    assert info.value.reason == "invalid_config" and "BaseAdapter" in info.value.message


def test_an_unknown_tool_names_the_closest_ones():
    from snakepit import Pool, SnakepitError
    from snakepit.adapters.showcase import ShowcaseAdapter

    with Pool(ShowcaseAdapter, size=1) as pool:
        with pytest.raises(SnakepitError) as info:
            pool.execute("ad", {})
        assert info.value.reason == "tool_not_found" and "did you mean 'add'" in info.value.message
        with pytest.raises(SnakepitError) as info:
            pool.execute("zzzzzz", {})
        assert "did you mean" not in info.value.message

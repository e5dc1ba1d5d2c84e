"""Plain functions as tools: Pool([f, g]), Pool(f), Pool("package.module"), setup= and state."""

from __future__ import annotations

import function_tools
import pytest
from function_tools import add, countdown, imported_in_parent, load_model, predict

from snakepit import Pool, SnakepitError, tool


def test_a_list_of_functions_serves_each_as_a_tool():
    with Pool([add, countdown], size=1) as pool:
        assert pool.execute("add", a=2, b=3) == 5
        assert pool.execute("add", {"a": 2}) == 3
        assert list(pool.stream("countdown", n=3)) == [3, 2, 1]  # a generator function streams
        specs = {spec.name: spec for spec in pool.tools()}
        assert set(specs) == {"add", "countdown"}
        assert specs["add"].description == "Add two numbers." and not specs["add"].supports_streaming
        assert [(p.name, p.required) for p in specs["add"].parameters] == [("a", True), ("b", False)]
        assert specs["countdown"].supports_streaming
        assert list(pool.map("add", range(4), param="a")) == [1, 2, 3, 4]


def test_one_function_is_a_pool_of_it():
    with Pool(add, size=1) as pool:
        assert pool.execute("add", a=1) == 2
        with pytest.raises(SnakepitError) as info:
            pool.execute("add", a="one")
        assert info.value.reason == "invalid_arguments"  # checked against the annotations, as a method's


def test_setup_runs_once_per_worker_and_its_value_is_the_state_parameter():
    with Pool([predict, function_tools.add], size=2, setup=load_model) as pool:
        assert pool.execute("predict", row=[1.5, 2.0]) == "tiny:3.5"
        (spec,) = [spec for spec in pool.tools() if spec.name == "predict"]
        assert [p.name for p in spec.parameters] == ["row"]  # state is not the caller's to pass
        with pytest.raises(SnakepitError) as info:
            pool.execute("predict", row=[1.0], state={"name": "forged"})
        assert info.value.reason == "invalid_arguments"
        assert pool.execute("add", a=1) == 2  # a function without a state parameter gets none


def test_a_module_named_without_a_colon_serves_its_public_functions():
    with Pool("function_tools", size=1) as pool:
        names = {spec.name for spec in pool.tools()}
        assert {"add", "countdown", "predict", "load_model", "imported_in_parent"} <= names
        assert "_private" not in names and "tool" not in names  # imported names are not its own
        assert pool.execute("imported_in_parent")  # the template imported the module: a warm start


def test_a_module_with_marked_functions_serves_those_alone_with_their_options():
    with Pool("marked_tools", size=1) as pool:
        (spec,) = pool.tools()
        assert (spec.name, spec.description, spec.idempotent) == ("double", "twice the value", True)
        assert pool.execute("double", x=21) == 42


def test_functions_importable_by_name_start_warm():
    with Pool([imported_in_parent], size=1) as pool:
        assert pool.execute("imported_in_parent") is True


def test_tool_options_apply_to_functions():
    @tool(name="triple", idempotent=True, description="three times")
    def three(x: int) -> int:
        return 3 * x

    with Pool([three], size=1) as pool:
        (spec,) = pool.tools()
        assert (spec.name, spec.idempotent, spec.description) == ("triple", True, "three times")
        assert pool.execute("triple", x=2) == 6


def test_a_local_function_travels_by_value_and_its_frames_read_its_file():
    def fails(x: int) -> int:
        raise ValueError(f"no {x}")

    with Pool([fails], size=1) as pool, pytest.raises(ValueError) as info:
        pool.execute("fails", x=1)
    text = str(info.value.__cause__)
    assert __file__ in text and 'raise ValueError(f"no {x}")' in text


@pytest.mark.parametrize(
    ("adapter", "options", "words"),
    [
        ([add], {"adapter_args": {"a": 1}}, "adapter_args"),
        ([add, add], {}, "both tool 'add'"),
        ([lambda x: x], {}, "no name"),
        ([add, 3], {}, "must be a function"),
        ([], {}, "at least one"),
        ("not a module!", {}, "package.module"),
        ([add], {"setup": 5}, "setup must be callable"),
    ],
)
def test_what_cannot_work_is_refused_at_once(adapter, options, words):
    with pytest.raises(SnakepitError) as info:
        Pool(adapter, size=1, **options)
    assert info.value.reason == "invalid_config" and words in info.value.message


def test_setup_with_an_adapter_class_is_refused():
    from helpers import Toolbox

    with pytest.raises(SnakepitError) as info:
        Pool(Toolbox, size=1, setup=load_model)
    assert info.value.reason == "invalid_config"


def boom() -> None:
    raise RuntimeError("setup failed")


@pytest.mark.parametrize(("adapter", "options"), [([add], {"setup": boom}), ("helpers_without_functions", {})])
def test_a_worker_that_cannot_set_them_up_fails_to_start(adapter, options):
    pool = Pool(adapter, size=1, start_timeout=30, quarantine_after=None, **options)
    with pytest.raises(SnakepitError) as info:
        pool.start()
    assert info.value.reason == "worker_start_failed"


async def coroutine(x: int) -> int:
    return x


def positional_only(a: int, /, b: int = 0) -> int:
    return a + b


def mixed(a: int, /, *, b: int = 0) -> int:
    return a + b


@pytest.mark.parametrize(("function", "words"), [(coroutine, "async function"), (mixed, "positional-only")])
def test_a_function_a_worker_could_not_serve_is_refused_at_once(function, words):
    with pytest.raises(SnakepitError) as info:
        Pool(function, size=1)
    assert info.value.reason == "invalid_config" and words in info.value.message


def test_builtins_and_positional_only_parameters_are_served():
    import math

    with Pool([math.sqrt, len, positional_only], size=1) as pool:
        assert pool.execute("sqrt", x=4.0) == 2.0
        assert pool.execute("len", obj=[1, 2, 3]) == 3
        assert pool.execute("positional_only", a=1, b=2) == 3


def test_a_function_named_like_an_adapter_class_says_what_to_do():
    pool = Pool("function_tools:add", size=1, start_timeout=30, quarantine_after=None)
    with pytest.raises(SnakepitError) as info:
        pool.start()
    assert info.value.reason == "worker_start_failed" and "Pool(function)" in info.value.message

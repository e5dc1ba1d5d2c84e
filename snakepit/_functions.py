"""Plain functions as tools: ``Pool([f, g])``, ``Pool(f)`` or ``Pool("package.module")``.

The owner describes the functions (:func:`function_adapter`) and every worker hosts them with
the built-in :class:`FunctionAdapter`, which the template process imports like any adapter named
``"module:Class"``: functions importable by name travel by name (and their modules are imported
by the template, so workers start warm), others by value with cloudpickle. A module named
without a colon gives its ``@tool`` functions, or all its public functions if none is marked.

``setup`` (``Pool(..., setup=fn)``) runs once per worker, before its first call; what it
returns is passed as the keyword ``state`` to the functions that declare a ``state`` parameter
(which is then not a parameter callers pass).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from snakepit import _errors as errors
from snakepit._adapter import TOOL_ATTR, BaseAdapter, build, tool_options
from snakepit._errors import Reason

__all__ = ["FUNCTION_ADAPTER", "FunctionAdapter", "function_adapter", "is_functions"]

FUNCTION_ADAPTER = "snakepit._functions:FunctionAdapter"
STATE = "state"  # the parameter that receives what ``setup`` returned


def is_functions(adapter: Any) -> bool:
    """Whether ``Pool(adapter)`` names plain functions rather than an adapter class."""
    if isinstance(adapter, str):
        return ":" not in adapter
    if isinstance(adapter, (list, tuple)):
        return True
    return callable(adapter) and not isinstance(adapter, type)


def function_adapter(
    adapter: Any, setup: Callable[[], Any] | None, adapter_args: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """What workers host for these functions: the built-in adapter's name, its arguments, and
    the modules the template imports for them. ``invalid_config`` for what cannot work."""
    if adapter_args:
        raise errors.validation(Reason.INVALID_CONFIG, "adapter_args apply to an adapter class; functions take none")
    if setup is not None and not callable(setup):
        raise errors.validation(Reason.INVALID_CONFIG, f"setup must be callable, got {type(setup).__name__}")
    if isinstance(adapter, str):
        if not adapter or not all(part.isidentifier() for part in adapter.split(".")):
            raise errors.validation(Reason.INVALID_CONFIG, f"a module of tools is named like 'package.module', got {adapter!r}")
        return FUNCTION_ADAPTER, {"module": adapter, "setup": setup}, (adapter, *_module_of(setup))
    functions = list(adapter) if isinstance(adapter, (list, tuple)) else [adapter]
    if not functions:
        raise errors.validation(Reason.INVALID_CONFIG, "Pool() needs at least one function")
    names: dict[str, Any] = {}
    for function in functions:
        if not callable(function) or isinstance(function, type):
            raise errors.validation(
                Reason.INVALID_CONFIG, f"each tool must be a function, got {type(function).__name__}: {function!r}"
            )
        name = tool_name(function)
        _check_tool(name, function, setup)
        if name in names:
            raise errors.validation(Reason.INVALID_CONFIG, f"two functions are both tool {name!r}: name one with @tool(name=...)")
        names[name] = function
    _remember(*functions, setup)
    modules = tuple(dict.fromkeys(module for f in (*functions, setup) for module in _module_of(f)))
    return FUNCTION_ADAPTER, {"functions": functions, "setup": setup}, modules


def tool_name(function: Any) -> str:
    options = getattr(function, TOOL_ATTR, None)
    name = getattr(options, "name", None) or getattr(function, "__name__", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise errors.validation(
            Reason.INVALID_CONFIG, f"{function!r} has no name to call it by: give it one with @tool(name=...)"
        )
    return name


def _check_tool(name: str, function: Any, setup: Any) -> None:
    """Refuse here what a worker could not serve: a coroutine function (the worker runs plain
    calls), or a signature that cannot be read or bound (a builtin's, a mix of positional-only
    and keyword-only parameters)."""
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise errors.validation(
            Reason.INVALID_CONFIG, f"{name!r} is an async function: a tool is a plain function (or a generator function)"
        )
    fixed = {STATE: None} if setup is not None and _takes_state(function) else None
    try:
        build(name, function, tool_options(function), fixed)
    except (TypeError, ValueError) as exc:
        raise errors.validation(Reason.INVALID_CONFIG, f"{name!r} cannot be a tool: {exc}") from None


def _module_of(function: Any) -> tuple[str, ...]:
    """The module to import in the template for ``function``: its own, if it is importable by
    name (a function of ``__main__`` or a notebook travels by value)."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if not isinstance(module, str) or module == "__main__" or "<locals>" in qualname or module not in sys.modules:
        return ()
    return (module,)


def _remember(*functions: Any) -> None:
    from snakepit._remote import remember  # where their code comes from, for workers' tracebacks

    for function in functions:
        if function is not None and not _module_of(function):
            remember(function)


def public_functions(module: types.ModuleType) -> list[Callable[..., Any]]:
    """A module's tools: its ``@tool`` functions, or else every public function it defines."""
    defined = [
        value
        for name, value in vars(module).items()
        if inspect.isfunction(value) and getattr(value, "__module__", None) == module.__name__
    ]
    marked: list[Callable[..., Any]] = [function for function in defined if hasattr(function, TOOL_ATTR)]
    if marked:
        return marked
    return [function for function in defined if not function.__name__.startswith("_")]


class FunctionAdapter(BaseAdapter):
    """Hosts plain functions (see the module's docstring): built into snakepit, named by
    :data:`FUNCTION_ADAPTER`."""

    thread_safe = True  # as safe as the functions are: threads_per_worker is the caller's choice

    def __init__(
        self,
        functions: Sequence[Callable[..., Any]] | None = None,
        module: str | None = None,
        setup: Callable[[], Any] | None = None,
    ) -> None:
        self._functions = list(functions or ())
        self._module = module
        self._setup = setup
        self._snakepit_functions: list[tuple[str, Callable[..., Any], Any, dict[str, Any]]] = []

    def initialize(self) -> None:
        functions = self._functions
        if self._module is not None:
            module = importlib.import_module(self._module)
            functions = public_functions(module)
            if not functions:
                raise TypeError(f"module {self._module!r} has no public functions to serve as tools")
        state = self._setup() if self._setup is not None else None
        for function in functions:
            fixed = {STATE: state} if self._setup is not None and _takes_state(function) else {}
            self._snakepit_functions.append((tool_name(function), function, tool_options(function), fixed))


def _takes_state(function: Callable[..., Any]) -> bool:
    try:
        return STATE in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False

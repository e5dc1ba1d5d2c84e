"""Adapters and tools: what a worker hosts, and how its tools describe and check themselves.

An adapter is a class; each worker process creates exactly one instance, calls ``initialize()``
once before its first call (load the model here) and ``cleanup()`` once when it shuts down
cleanly. Methods marked with :func:`tool` are the callable tools.

A tool's spec (name, description, parameters, streaming) comes from introspection, and its
arguments are checked against the signature and annotations *before* the tool runs: the
parameters become a ``msgspec`` struct type, so ``msgspec.convert`` does the type checking and
coercion of wire values (a list for a ``tuple[int, int]`` parameter, a dict for a dataclass) and
its error names the offending parameter.

Numpy values get one more chance, on the failure path only (a check that succeeds costs nothing
more): when the check fails, numpy scalars in the arguments (``np.float64(1.5)`` for a ``float``,
in lists, tuples and dicts too) become their Python twins with ``.item()`` and the arguments are
checked again. An array for a list parameter is never converted: its error says to annotate the
parameter ``numpy.ndarray`` (arrays travel by shared memory) or to pass ``.tolist()``. numpy is
never imported here: a worker that holds numpy values has imported it to unpickle them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import re
import sys
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union, overload

import msgspec
from msgspec import UNSET, UnsetType

from snakepit import _errors as errors
from snakepit._errors import Reason

__all__ = [
    "BaseAdapter",
    "tool",
    "ToolSpec",
    "ParameterSpec",
    "discover_tools",
    "BoundTool",
    "import_by_path",
    "tool_options",
    "TOOL_ATTR",
]

F = TypeVar("F", bound=Callable[..., Any])

TOOL_ATTR = "__snakepit_tool__"


class BaseAdapter:
    """Base class for adapters. Override ``initialize``/``cleanup``; mark tools with ``@tool``."""

    def initialize(self) -> None:
        """Runs once per worker process, before the first call."""

    def cleanup(self) -> None:
        """Runs once when the worker shuts down cleanly."""


@dataclass(frozen=True)
class _ToolOptions:
    name: str | None
    description: str | None
    supports_streaming: bool | None
    idempotent: bool = False


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    *, description: str | None = None, supports_streaming: bool | None = None, name: str | None = None, idempotent: bool = False
) -> Callable[[F], F]: ...


def tool(
    func: F | None = None,
    /,
    *,
    description: str | None = None,
    supports_streaming: bool | None = None,
    name: str | None = None,
    idempotent: bool = False,
) -> F | Callable[[F], F]:
    """Mark an adapter method (or a plain function: ``Pool([f, g])``) as a tool, bare
    (``@tool``) or with options.

    ``supports_streaming`` defaults to whether the method is a generator function; ``description``
    defaults to the first paragraph of the docstring; ``name`` to the method name.
    ``idempotent=True``: running it again is safe, so a call whose worker dies under it is run
    again on another worker (see ``Pool(max_retries=...)``).
    """
    if not isinstance(idempotent, bool):
        raise TypeError(f"idempotent must be a bool, got {idempotent!r}")

    def mark(f: F) -> F:
        setattr(f, TOOL_ATTR, _ToolOptions(name, description, supports_streaming, idempotent))
        return f

    return mark(func) if func is not None else mark


class ParameterSpec(msgspec.Struct, frozen=True):
    name: str
    type: str
    required: bool
    default: Any = None


class ToolSpec(msgspec.Struct, frozen=True):
    name: str
    description: str
    parameters: list[ParameterSpec]
    supports_streaming: bool
    idempotent: bool = False  # safe to run again after its worker died (see Pool's max_retries)


@dataclass
class BoundTool:
    """A tool of one adapter instance, ready to check arguments and run.

    Checking converts an args dict into a "bound" value: the msgspec struct of the parameters
    or, for a tool taking ``**kwargs`` or with an omitted mutable default, the keyword dict.
    :meth:`call` runs the tool with it; tools whose parameters all fit positionally are called
    with the struct's fields as a tuple, the fastest call Python has.
    """

    spec: ToolSpec
    func: Callable[..., Any]
    is_generator: bool
    _args_type: type[msgspec.Struct] | None = field(default=None, repr=False)
    _accepts_extra: bool = False
    _names: tuple[str, ...] = ()
    _positional: bool = False

    def bind(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the signature; return the (converted) keyword arguments."""
        bound = self.convert(args)
        if self._positional:
            return dict(zip(self._names, msgspec.structs.astuple(bound)))
        return bound

    def convert(self, args: Any) -> Any:
        """Check ``args``; the bound value for :meth:`call` (``invalid_arguments`` otherwise)."""
        if type(args) is not dict:
            raise errors.validation(
                Reason.INVALID_ARGUMENTS,
                f"arguments for {self.spec.name!r} must be a dict, got {type(args).__name__}",
                tool=self.spec.name,
            )
        extra: dict[str, Any] = {}
        if self._accepts_extra:
            extra = {k: v for k, v in args.items() if k not in self._names}
            args = {k: v for k, v in args.items() if k in self._names}
        if self._args_type is None:
            return {**args, **extra}
        try:
            converted = msgspec.convert(args, self._args_type, str_keys=True)
        except msgspec.ValidationError as exc:
            converted = self._recheck(args, exc)
        if self._positional:
            return converted
        kwargs = {k: v for k, v in msgspec.structs.asdict(converted).items() if v is not UNSET}
        return {**kwargs, **extra} if extra else kwargs

    def decode_many(self, encoded: bytes | memoryview, decode_items: Callable[[Any], Any]) -> list[Any]:
        """The bound values of an encoded list of args dicts: decoded straight into parameter
        structs with one C call when every item is valid; else item by item (see
        :meth:`convert_many`). ``decode_items`` turns the encoding into plain values."""
        if self._batch_decoder is not None:
            try:
                return self._batch_decoder.decode(encoded)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass  # an invalid item, or a pickled batch: the general path says which
        return self.convert_many(decode_items(encoded))

    @property
    def _batch_decoder(self) -> msgspec.msgpack.Decoder | None:
        if not self._positional or self._args_type is None:
            return None
        decoder = self.__dict__.get("_decoder")
        if decoder is None:
            decoder = self.__dict__["_decoder"] = msgspec.msgpack.Decoder(list[self._args_type])  # type: ignore[name-defined]
        return decoder

    def convert_many(self, items: Any) -> list[Any]:
        """:meth:`convert` for a batch: one C call when every item is valid; else item by item,
        with the error in place of each invalid item's bound value."""
        if type(items) is not list:
            raise errors.validation(Reason.INVALID_ARGUMENTS, f"a batch must be a list, got {type(items).__name__}")
        if self._positional and self._args_type is not None:
            batch_type = list[self._args_type]  # type: ignore[name-defined]
            try:
                return msgspec.convert(items, batch_type, str_keys=True)
            except msgspec.ValidationError:
                plain = _python_scalars(items)
                if plain is not items:  # numpy items: the whole batch at once, else item by item
                    try:
                        return msgspec.convert(plain, batch_type, str_keys=True)
                    except msgspec.ValidationError:
                        pass
        bound: list[Any] = []
        for args in items:
            if isinstance(args, errors.SnakepitError):  # could not be decoded: already its error
                bound.append(args)
                continue
            try:
                bound.append(self.convert(args))
            except errors.SnakepitError as exc:
                bound.append(exc)
        return bound

    def call(self, bound: Any) -> Any:
        if self._positional:
            return self.func(*msgspec.structs.astuple(bound))
        return self.func(**bound)

    def call_many(self, bound: Iterable[Any]) -> Iterator[Any]:
        """:meth:`call` for each bound value, lazily, iterated in C where the tool allows: a
        ``map`` of tiny tasks is bound by per-item overhead, and a Python loop would triple it."""
        if self._positional:
            return itertools.starmap(self.func, map(msgspec.structs.astuple, bound))
        return map(self.call, bound)

    def _recheck(self, args: dict[str, Any], exc: msgspec.ValidationError) -> Any:
        """``args`` failed the check: converted once their numpy scalars are Python's, or
        ``invalid_arguments`` (the first error, unless it was about a numpy scalar)."""
        plain = _python_scalars(args)
        if plain is not args:
            try:
                return msgspec.convert(plain, self._args_type, str_keys=True)
            except msgspec.ValidationError as again:
                if _location(again) != _location(exc):  # the first error was a numpy scalar's
                    exc = again
        raise self._invalid(exc) from None

    def _invalid(self, exc: msgspec.ValidationError) -> errors.SnakepitError:
        message = f"invalid arguments for {self.spec.name!r}: {_describe_validation(exc)}"
        if _ARRAY_FOR_SEQUENCE.match(str(exc)):
            message += (
                "; annotate the parameter `numpy.ndarray` to receive the array (it travels by shared memory), or pass `.tolist()`"
            )
        return errors.validation(Reason.INVALID_ARGUMENTS, message, tool=self.spec.name)


# msgspec's words for an ndarray where a list, tuple or sequence was expected
_ARRAY_FOR_SEQUENCE = re.compile(r"Expected `[^`]*\barray\b[^`]*`, got `numpy\.ndarray`")


def _python_scalars(value: Any) -> Any:
    """``value`` with the numpy scalars in it (in lists, tuples and dicts, keys too) made Python
    scalars with ``.item()``: ``value`` itself if it holds none, or if numpy was never imported
    (then it cannot). Arrays are left as they are."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return value
    try:
        return _replace_scalars(value, (numpy.floating, numpy.integer, numpy.bool_, numpy.str_))
    except RecursionError:  # a value nested too deep (or containing itself): left as it is
        return value


def _replace_scalars(value: Any, scalars: tuple[type, ...]) -> Any:
    if isinstance(value, scalars):
        return typing.cast(Any, value).item()
    kind = type(value)
    if kind is dict:
        pairs = [(_replace_scalars(k, scalars), _replace_scalars(v, scalars)) for k, v in value.items()]
        if all(k is old_k and v is old_v for (k, v), (old_k, old_v) in zip(pairs, value.items())):
            return value
        return dict(pairs)
    if kind is list or kind is tuple:
        items = [_replace_scalars(item, scalars) for item in value]
        if all(new is old for new, old in zip(items, value)):
            return value
        return items if kind is list else tuple(items)
    return value


def _location(exc: msgspec.ValidationError) -> str:
    """Where in the arguments msgspec found the error (``$.row[0]``), or ``""``."""
    _, sep, where = str(exc).rpartition(" - at ")
    return where if sep else ""


_JSON_NAMES = {"`object`": "`dict`", "`array`": "`list`", "`null`": "`None`"}


def _describe_validation(exc: msgspec.ValidationError) -> str:
    """Say 'parameter `a`' where msgspec says '$.a', and Python type names where it says JSON's."""
    text = str(exc)
    for json_name, py_name in _JSON_NAMES.items():
        text = text.replace(json_name, py_name)
    head, sep, path = text.partition(" - at `$.")
    if not sep:
        return text.replace("Object missing required field", "missing required parameter").replace(
            "Object contains unknown field", "unknown parameter"
        )
    param = path.rstrip("`")
    return f"parameter `{param}`: {head}"


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def _supported(annotation: Any) -> bool:
    try:
        msgspec.inspect.type_info(annotation)
    except (TypeError, ValueError):
        return False
    return True


_IMMUTABLE = frozenset({type(None), bool, int, float, str, bytes, tuple, frozenset})


def _plain_default(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return value
    return repr(value)


def _first_paragraph(doc: str | None) -> str:
    return inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ") if doc else ""


def build(name: str, func: Callable[..., Any], options: _ToolOptions, fixed: dict[str, Any] | None = None) -> BoundTool:
    """``func`` as a tool; ``fixed``: keyword arguments it always gets (a function's ``state``),
    which are not its callers' to pass."""
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: check nothing rather than refuse the tool
        hints = {}
    params: list[ParameterSpec] = []
    fields: list[tuple[Any, ...]] = []
    accepts_extra = unset_defaults = keyword_only = positional_only = False
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL or (fixed and p.name in fixed):
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional_only = True
        annotation = hints.get(p.name, p.annotation)
        required = p.default is inspect.Parameter.empty
        params.append(ParameterSpec(p.name, _type_name(annotation), required, None if required else _plain_default(p.default)))
        checked = annotation if annotation is not inspect.Parameter.empty and _supported(annotation) else Any
        if required:
            fields.append((p.name, checked))
        elif type(p.default) in _IMMUTABLE:
            fields.append((p.name, checked, p.default))
        else:
            # An omitted mutable default stays UNSET and is left out of the call, so Python
            # applies the tool's own default object exactly as a direct call would.
            fields.append((p.name, Union[checked, UnsetType], UNSET))  # noqa: UP007 (a runtime type, maybe not a class)
            unset_defaults = True
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            keyword_only = True
    is_generator = inspect.isgeneratorfunction(func)
    streaming = is_generator if options.supports_streaming is None else options.supports_streaming
    spec = ToolSpec(
        name=options.name or name,
        description=options.description if options.description is not None else _first_paragraph(func.__doc__),
        parameters=params,
        supports_streaming=streaming,
        idempotent=options.idempotent,
    )
    args_type = None
    if fields:
        # gc=False: an arguments struct never takes part in a cycle (the tool gets its field
        # values, not the struct), and untracked structs decode twice as fast.
        args_type = msgspec.defstruct(
            f"{spec.name}_args", fields, forbid_unknown_fields=not accepts_extra, kw_only=True, gc=False
        )
    positional = args_type is not None and not (accepts_extra or unset_defaults or keyword_only or fixed)
    if positional_only and not positional:
        raise TypeError(
            "a positional-only parameter (before '/') can be passed only if every parameter can be: "
            "none keyword-only, no **kwargs, no mutable default, no state"
        )
    call = functools.partial(func, **fixed) if fixed else func
    return BoundTool(spec, call, is_generator, args_type, accepts_extra, tuple(f[0] for f in fields), positional)


def import_by_path(path: str) -> Any:
    """The object at ``"package.module:Qual.name"``."""
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def tool_options(function: Any) -> _ToolOptions:
    """What ``@tool`` said of a function (the defaults if it is not marked)."""
    options = getattr(function, TOOL_ATTR, None)
    return options if isinstance(options, _ToolOptions) else _ToolOptions(None, None, None)


def discover_tools(adapter: object) -> dict[str, BoundTool]:
    """Every ``@tool`` method of an adapter instance, keyed by tool name, and the functions it
    hosts (see :mod:`snakepit._functions`)."""
    tools: dict[str, BoundTool] = {}
    found = [(attr, getattr(adapter, attr), None) for attr in _tool_attributes(type(adapter))]
    found += [(name, function, fixed) for name, function, _, fixed in getattr(adapter, "_snakepit_functions", ())]
    for attr, function, fixed in found:
        bound = build(attr, function, tool_options(function), fixed)
        if bound.spec.name in tools:
            raise TypeError(f"{type(adapter).__name__} defines tool {bound.spec.name!r} twice")
        tools[bound.spec.name] = bound
    return tools


def _tool_attributes(cls: type) -> Iterator[str]:
    seen: set[str] = set()
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if callable(value) and hasattr(value, TOOL_ATTR):
                yield attr

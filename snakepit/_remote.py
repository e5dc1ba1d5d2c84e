"""What a tool's exception becomes in the caller: its own type, its attributes and its frames.

A worker describes what a tool raised as data (:func:`snakepit._hosting.host`'s failure: the
class's qualified name in ``details["type"]``, the worker's traceback text, and the exception
pickled when it pickles). In the caller, :func:`tool_error` turns that into an error that is
both a :class:`~snakepit.ToolError` and an instance of the tool's own exception class -- so
``except ValueError`` catches it, as ``concurrent.futures`` and Ray let it -- when that class is
an ``Exception`` whose module the caller has already imported (nothing is imported for this).
The derived class is built once per exception class, without calling the original class's
``__new__`` or ``__init__``. Attribute lookups the error cannot answer itself (``errno``,
``returncode``, ``args``...) go to the unpickled original, unpickled at first use in the thread
that asks. Its ``__cause__`` is a :class:`RemoteTraceback` whose text is the worker's traceback,
so an uncaught error prints the worker's frames.

Frames of code that travelled by value (an adapter or function from ``__main__`` or a notebook)
read ``File "<dynamic-code>"`` in the worker: cloudpickle drops the file name on purpose. The
owner remembers where such code came from (:func:`remember`) and puts the file name and its
source line back (:func:`readable`), read through :mod:`linecache`, where notebook cells are
registered too.
"""

from __future__ import annotations

import asyncio
import builtins
import linecache
import pickle
import re
import sys
import threading
import types
import weakref
from typing import Any

from snakepit import _errors as errors

__all__ = ["RemoteTraceback", "tool_error", "remember", "readable", "original", "pickled_exception"]


class RemoteTraceback(Exception):
    """The ``__cause__`` of an error a tool raised: its ``str()`` is the worker's traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


# -- typed errors -----------------------------------------------------------------------------------

_NOT_TYPED = (StopIteration, StopAsyncIteration, GeneratorExit, asyncio.CancelledError, errors.SnakepitError)
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement, not a C type
_typed: weakref.WeakKeyDictionary[type, type | None] = weakref.WeakKeyDictionary()
_typed_lock = threading.Lock()


def tool_error(
    category: str,
    reason: str,
    message: str,
    details: dict[str, Any] | None = None,
    traceback: str | None = None,
    exception: bytes | None = None,
) -> errors.SnakepitError:
    """The error a caller gets for a failure from a worker (see the module's docstring); for
    any other failure, what :func:`snakepit._errors.build_error` builds."""
    if traceback is not None and "<dynamic-code>" in traceback:
        traceback = readable(traceback)
    cls = None
    if category == errors.Category.PYTHON_ERROR and details is not None:
        name = details.get("type")
        if isinstance(name, str):
            cls = _derived(name)
    if cls is None:
        error = errors.build_error(category, reason, message, details, traceback)
    else:
        error = _new(cls)
        errors.ToolError.__init__(error, category, reason, message, details, traceback)
    if exception is not None:  # for original(), and attribute lookups of a typed error
        error.__dict__["_exception_pickle"] = exception
    if traceback is not None and category == errors.Category.PYTHON_ERROR:
        error.__cause__ = RemoteTraceback(traceback)
    return error


def original(error: BaseException) -> BaseException | None:
    """The tool's own exception object behind ``error``, unpickled (once) in this thread; None
    if the worker could not pickle it or it will not unpickle here."""
    state = error.__dict__
    if "_exception" in state:
        return state["_exception"]
    data = state.pop("_exception_pickle", None)
    value = None
    if data is not None:
        try:
            value = pickle.loads(data)
        except Exception:
            value = None
        if not isinstance(value, BaseException):
            value = None
    state["_exception"] = value
    return value


def pickled_exception(error: BaseException) -> bytes | None:
    """The tool's exception behind ``error`` as the worker pickled it (to pass on, e.g. to a
    gRPC client that takes pickles), without unpickling it here; None if there is none."""
    state = error.__dict__
    data = state.get("_exception_pickle")
    if data is None and state.get("_exception") is not None:
        try:
            data = pickle.dumps(state["_exception"], protocol=5)
        except Exception:
            return None
    return data


def _resolve(name: str) -> type | None:
    """The class called ``name`` ("ValueError", "package.module.Outer.Error") if its module is
    imported already: looked up in modules' and classes' namespaces, running no code."""
    parts = name.split(".")
    if len(parts) == 1:
        builtin = vars(builtins).get(name)
        return builtin if isinstance(builtin, type) else None
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        target: Any = module
        for part in parts[cut:]:
            namespace = getattr(target, "__dict__", None)
            target = None if namespace is None else namespace.get(part)
            if target is None:
                break
        if isinstance(target, type):
            return target
    return None


def _derived(name: str) -> type | None:
    """The cached class derived from ToolError and the class called ``name``, if it can be."""
    cls = _resolve(name)
    if cls is None or not issubclass(cls, Exception) or issubclass(cls, _NOT_TYPED):
        return None
    try:
        return _typed[cls]
    except KeyError:
        pass
    with _typed_lock:
        if cls not in _typed:
            _typed[cls] = _build(cls)
        return _typed[cls]


def _build(cls: type) -> type | None:
    namespace: dict[str, Any] = {
        "__module__": "snakepit",
        "__qualname__": f"ToolError({cls.__qualname__})",
        "__init__": errors.ToolError.__init__,
        "__getattr__": _getattr,
        "args": property(_args, _set_args),
    }
    # Attributes a C exception class keeps in its own slots (OSError's errno, SystemExit's
    # code...) are found on the new instance, unset: read them from the original instead.
    for klass in cls.__mro__:
        if klass.__flags__ & _HEAPTYPE or klass in (BaseException, Exception, object):
            continue
        for attr, descriptor in vars(klass).items():
            if isinstance(descriptor, (types.MemberDescriptorType, types.GetSetDescriptorType)) and not attr.startswith("__"):
                namespace.setdefault(attr, property(_slot_reader(attr, descriptor)))
    try:
        derived = type(f"ToolError({cls.__name__})", (errors.ToolError, cls), namespace)
        _new(derived)  # that it can be made
    except Exception:  # an instance layout conflict, a metaclass that refuses...
        return None
    return derived


def _new(cls: type) -> Any:
    """An instance of ``cls`` made by its first C base's ``__new__``: no Python code of the
    original class runs."""
    solid: Any = next(klass for klass in cls.__mro__ if not klass.__flags__ & _HEAPTYPE)
    return solid.__new__(cls)


def _getattr(self: BaseException, name: str) -> Any:
    if name.startswith("__") or name in ("_exception", "_exception_pickle"):
        raise AttributeError(name)
    value = original(self)
    if value is None:
        raise AttributeError(f"{type(self).__qualname__!r} object has no attribute {name!r}")
    return getattr(value, name)


def _args(self: Any) -> tuple[Any, ...]:
    value = original(self)
    return value.args if value is not None else (self.message,)


def _set_args(self: Any, args: Any) -> None:
    BaseException.args.__set__(self, args)  # type: ignore[attr-defined]


def _slot_reader(attr: str, descriptor: Any) -> Any:
    def read(self: Any) -> Any:
        value = original(self)
        return getattr(value, attr) if value is not None else descriptor.__get__(self)

    return read


# -- frames of code that travelled by value --------------------------------------------------------

_code_places: dict[str, set[tuple[int, int, str]]] = {}  # function name -> (first line, last line, file)
_DYNAMIC = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (.+)$')


def remember(obj: Any) -> None:
    """Note where the code of a class or function sent by value comes from."""
    seen: set[int] = set()
    for code in _codes(obj, seen, 0):
        lines = [line for _, _, line in code.co_lines() if line is not None]
        if lines and not code.co_filename.startswith("<dynamic"):
            place = (min(lines), max(lines), code.co_filename)
            _code_places.setdefault(code.co_name, set()).add(place)


def _codes(obj: Any, seen: set[int], depth: int) -> Any:
    if id(obj) in seen or depth > 8:
        return
    seen.add(id(obj))
    if isinstance(obj, types.CodeType):
        yield obj
        for const in obj.co_consts:
            if isinstance(const, types.CodeType):
                yield from _codes(const, seen, depth + 1)
    elif isinstance(obj, type):
        for value in vars(obj).values():
            yield from _codes(value, seen, depth + 1)
    elif isinstance(obj, (staticmethod, classmethod)):
        yield from _codes(obj.__func__, seen, depth + 1)
    elif isinstance(obj, property):
        for accessor in (obj.fget, obj.fset, obj.fdel):
            if accessor is not None:
                yield from _codes(accessor, seen, depth + 1)
    else:
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType):
            yield from _codes(code, seen, depth + 1)
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            yield from _codes(wrapped, seen, depth + 1)


def readable(traceback: str) -> str:
    """``traceback`` with each ``<dynamic-code>`` frame's file and source line put back, where
    the code was remembered (by function name and line)."""
    out: list[str] = []
    lines = traceback.splitlines(keepends=True)
    for index, line in enumerate(lines):
        match = _DYNAMIC.match(line.rstrip("\n"))
        if match is None:
            out.append(line)
            continue
        indent, number, name = match.group(1), int(match.group(2)), match.group(3)
        files = {path for first, last, path in _code_places.get(name, ()) if first <= number <= last}
        if len(files) != 1:
            out.append(line)
            continue
        path = files.pop()
        out.append(f'{indent}File "{path}", line {number}, in {name}\n')
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if following.startswith(indent + "  ") and not _DYNAMIC.match(following.rstrip("\n")):
            continue  # the worker printed a source line already
        source = linecache.getline(path, number).strip()
        if source:
            out.append(f"{indent}  {source}\n")
    return "".join(out)

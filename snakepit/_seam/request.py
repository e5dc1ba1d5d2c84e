"""One call, as every front end describes it.

The call methods (:class:`~snakepit._seam.calls.Calls`) build a :class:`CallRequest` and hand it
to the request-level methods: ``run``, ``run_stream``, ``open_stream`` and their asyncio twins. A
:class:`~snakepit.Pool` serves them in process, a :class:`snakepit.grpc.Client` over the wire.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, NamedTuple

from snakepit import _errors as errors
from snakepit._errors import Reason
from snakepit._seam.affinity import Affinity, parse_affinity


def positive_int(
    name: str, value: Any, *, allow_none: bool = False, minimum: int = 1, reason: str = Reason.INVALID_CONFIG
) -> Any:
    """``value`` if it is an int of at least ``minimum`` (or None, if allowed); else ``reason``
    (a pool option's is invalid_config, a call argument's invalid_arguments)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise errors.validation(reason, f"{name} must be {wanted}{' or None' if allow_none else ''}, got {value!r}")
    return value


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """The end of an "unknown tool" message: the closest names there are, if any are close."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def map_total(iterable_of_args: Any, total: int | None = None) -> int | None:
    """How many items a map's input has: ``total`` if the caller says, else the input's length
    if it has one (``None`` for a generator); refused if it is not an iterable at all."""
    if not isinstance(iterable_of_args, Iterable) or isinstance(iterable_of_args, (str, bytes, Mapping)):
        raise errors.validation(
            Reason.INVALID_ARGUMENTS, f"map takes an iterable of args dicts, got {type(iterable_of_args).__name__}"
        )
    if total is not None:
        return positive_int("total", total, minimum=0, reason=Reason.INVALID_ARGUMENTS)
    return len(iterable_of_args) if isinstance(iterable_of_args, Sized) else None


def tool_args(args: Any, keywords: dict[str, Any]) -> Any:
    """A call's arguments: the dict, or the tool's keyword arguments (``execute("f", x=1)``),
    not both."""
    if not keywords:
        return args
    if args is not None:
        raise errors.validation(
            Reason.INVALID_ARGUMENTS,
            f"pass the tool's arguments as a dict or as keywords, not both (got a dict and {', '.join(keywords)})",
        )
    return keywords


def map_items(items: Iterable[Any], param: str | None) -> Iterable[Any]:
    """A map's argument dicts: the items themselves, or ``{param: item}`` for each (lazily)."""
    if param is None:
        return items
    if not isinstance(param, str) or not param:
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"param must be a parameter's name, got {param!r}")
    return ({param: item} for item in items)


def star_items(items: Iterable[Any], tool: str, names: Sequence[str]) -> Iterator[Any]:
    """A starmap's argument dicts: each item's values bound to the tool's parameters in order
    (lazily). An item that is not a tuple or list, or has too many values, is that item's
    ``invalid_arguments``; missing ones are the tool's to refuse (or default)."""
    for item in items:
        if not isinstance(item, (tuple, list)):
            yield errors.validation(
                Reason.INVALID_ARGUMENTS,
                f"each item of a starmap must be a tuple of arguments, got {type(item).__name__}",
                tool=tool,
            )
        elif len(item) > len(names):
            yield errors.validation(
                Reason.INVALID_ARGUMENTS, f"{tool!r} takes {len(names)} argument(s), an item has {len(item)}", tool=tool
            )
        else:
            yield dict(zip(names, item))


def check_session_id(session_id: Any) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"session_id must be a non-empty str, got {session_id!r}")


def check_routing(session_id: Any, affinity: Affinity | str | None) -> Affinity | None:
    """Check a call's session id; its affinity mode, if it names one."""
    if session_id is not None:
        check_session_id(session_id)
    return None if affinity is None else parse_affinity(affinity)


def check_correlation_id(correlation_id: Any) -> None:
    if not isinstance(correlation_id, str) or not correlation_id:
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"correlation_id must be a non-empty str, got {correlation_id!r}")


def check_callback(callback: Any) -> None:
    if not callable(callback):
        raise errors.validation(Reason.INVALID_ARGUMENTS, "callback must be callable")


class CallRequest(NamedTuple):
    """One call, as the call methods describe it to the request-level ones (``Pool.run`` and
    its kin): what a front end of your own builds to call a pool the way ``execute`` does."""

    tool: str
    args: Mapping[str, Any] | None = None
    session_id: str | None = None
    affinity: Affinity | str | None = None
    timeout: float | None = None
    correlation_id: str | None = None  # the caller's; one is generated if None
    encode: str | None = None  # "json" or "pickle": values come back as snakepit.Encoded
    batch: int | None = None  # a stream's: up to this many chunks at hand per value (with encode)


class CallContext:
    """One call across its attempts: its correlation id, its trace span (if traced) and the
    retry it is on."""

    __slots__ = ("correlation_id", "span", "retry")

    def __init__(self, correlation_id: str, span: Any = None) -> None:
        self.correlation_id: str = correlation_id
        self.span: Any = span  # a snakepit._tracing.CallSpan, or None
        self.retry: Any = None  # the pool's Retry, once the call runs again

    def end(self, error: BaseException | None = None) -> None:
        """The call is over: tag its error with the correlation id, end its span."""
        if isinstance(error, errors.SnakepitError):
            error.details.setdefault("correlation_id", self.correlation_id)
        if self.span is not None:
            self.span.end(error)

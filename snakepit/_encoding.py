"""Values as bytes for someone else: JSON where it carries them, raw bytes, or a pickle. Pure logic.

This is how a result or chunk leaves for a client that is not Python's pickle-trusting owner: a
call's ``encode=`` option (``"json"`` or ``"pickle"``) has the pool hand back each value as an
:class:`Encoded` -- its bytes and their content type -- and the gRPC facade forwards those bytes.
Both sides of a worker's pipes import it: a worker encodes the values of such a call itself
(the owner then forwards bytes instead of converting each value on its one thread), and the
owner encodes with the same function what a worker did not (values of a shared-memory size, and
every value of a backend whose workers do not encode).

The rules, one function (:func:`encode_value`): ``bytes`` travel raw (``application/octet-stream``);
a value JSON carries exactly (``None``, ``bool``, ``str``, finite ``float``, ``int`` within
+-2**53, and lists and string-keyed dicts of those) is JSON; anything else is pickled under
``"pickle"`` (protocol 5, ``application/x-python-pickle``), and otherwise converted as
:func:`json_default` documents (a tuple or set becomes a list, a numpy array its ``tolist()``, a
dataclass a dict, an enum its value, a datetime an ISO string...), or refused as
``serialization_error``. A float JSON has no number for (NaN, an infinity) is the JSON string
``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, as Snakepit's serializer sends one.
"""

from __future__ import annotations

import math
import operator
import pickle
from collections.abc import Callable
from typing import Any

import msgspec

from snakepit import _errors as errors
from snakepit._errors import Reason

__all__ = ["Encoded", "JSON", "OCTETS", "PICKLE", "ENCODINGS"]

JSON = "application/json"
OCTETS = "application/octet-stream"
PICKLE = "application/x-python-pickle"
CONTENT_TYPES = (JSON, OCTETS, PICKLE)  # in this order: a content type's index travels (see _protocol)
ENCODINGS = ("json", "pickle")

_MAX_EXACT_INT = 2**53
_json_encoder = msgspec.json.Encoder()


class Encoded(msgspec.Struct, frozen=True, gc=False):
    """A result or chunk as bytes, from a call made with ``encode="json"`` or ``"pickle"``:
    ``data`` is to be read as ``content_type`` says (``application/json``,
    ``application/octet-stream`` for a ``bytes`` value, ``application/x-python-pickle``).

    A struct, not a tuple: one is made per chunk of a stream, and a struct costs a tenth of a
    named tuple to make."""

    data: bytes
    content_type: str


def check_encoding(encode: Any) -> str | None:
    """A call's ``encode`` option: None, ``"json"`` or ``"pickle"``; else ``invalid_arguments``."""
    if encode is None or (type(encode) is str and encode in ENCODINGS):
        return encode
    raise errors.validation(Reason.INVALID_ARGUMENTS, f"encode must be None, 'json' or 'pickle', got {encode!r}")


_MOST_CHUNKS = 1 << 32  # more chunks than a value ever packs (a worker's array holds 1 MiB at most, but for one element)


def check_batch(batch: Any, encode: str | None, stream: bool) -> int | None:
    """A call's ``batch`` option: None, or how many chunks at most one value packs (a stream's,
    with an ``encode`` option); else ``invalid_arguments``. More than any batch holds is as
    many as there are (the ``Call`` frame carries no integer beyond 64 bits)."""
    if batch is None:
        return None
    # Any integer (numpy's too), not a bool, a float or a str.
    count = 0 if isinstance(batch, bool) or not hasattr(type(batch), "__index__") else operator.index(batch)
    if count < 1:
        raise errors.validation(Reason.INVALID_ARGUMENTS, f"batch must be None or a positive int, got {batch!r}")
    if not stream:
        raise errors.validation(Reason.INVALID_ARGUMENTS, "batch packs a stream's chunks: it applies to streaming calls only")
    if encode is None:
        raise errors.validation(Reason.INVALID_ARGUMENTS, "batch packs encoded chunks: give encode='json' or 'pickle' with it")
    return min(count, _MOST_CHUNKS)


def element_into(value: Any, buffer: bytearray, accept_pickle: bool) -> bool:
    """Write ``value`` into ``buffer`` (in place of what it held) as an element of a JSON array
    of chunks (see :func:`packed`); False where it travels in a pickled list instead (a client
    that takes pickles, and JSON does not carry the value exactly). Without pickles, a ``bytes``
    chunk is its base64 string and a float JSON has no number for is ``"NaN"``, ``"Infinity"``
    or ``"-Infinity"``, as each is when it travels alone; ``serialization_error`` where JSON
    cannot carry the value at all. Into a buffer: a stream's worker encodes every chunk so."""
    if accept_pickle:
        if type(value) is bytes or not exact_json(value):
            return False
        try:
            _json_encoder.encode_into(value, buffer)
        except UnicodeEncodeError:  # a str with a lone surrogate
            return False
        return True
    if type(value) is float and not math.isfinite(value):
        buffer[:] = non_finite_json(value)
        return True
    try:
        _json_converting.encode_into(value, buffer)
    except (TypeError, ValueError, msgspec.EncodeError, OverflowError, RecursionError):
        to_json(value)  # raises the serialization_error this is
        raise
    return True


def element_writer(accept_pickle: bool) -> Callable[[Any, bytearray], object] | None:
    """What :func:`element_into` does for any value but a ``float``, as one C call that raises
    where the value is not JSON (then :func:`element_into` says how): the hot path of a batched
    stream's worker. None with pickles, whose elements are checked for exactness first."""
    return None if accept_pickle else _json_converting.encode_into


def packed(values: list[Any], *, accept_pickle: bool) -> Encoded:
    """Chunks as one value of a batched stream: a JSON array of them, or, where one of them
    cannot be an element of it (see :func:`element_into`), the pickled list."""
    buffer = bytearray()
    elements = []
    for value in values:
        if not element_into(value, buffer, accept_pickle):
            return Encoded(pickle.dumps(values, protocol=5), PICKLE)
        elements.append(bytes(buffer))
    return Encoded(b"[" + b",".join(elements) + b"]", JSON)


def encoded(value: Any, encode: str) -> Encoded:
    """``value`` as :func:`encode_value` encodes it (``encode``: ``"json"`` or ``"pickle"``)."""
    data, content_type = encode_value(value, accept_pickle=encode == "pickle")
    return Encoded(data, content_type)


def too_deep(what: str) -> errors.ValidationError:
    """A value nested deeper than can be encoded or decoded here: what the pool says of a value
    nested too deep to travel (``serialization_error``)."""
    return errors.validation(Reason.SERIALIZATION_ERROR, f"{what} is nested too deeply to be encoded or decoded")


def exact_json(value: Any) -> bool:
    """:func:`json_exact`, False for a value nested too deep to check from here."""
    try:
        return json_exact(value)
    except RecursionError:
        return False


def json_exact(value: Any) -> bool:
    """JSON carries ``value`` exactly: it decodes to an equal value of the same types."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT
    if kind is float:
        return math.isfinite(value)
    # Plain loops, not all() over a generator: this runs for every chunk a stream sends, and the
    # generator's frame doubled its cost.
    if kind is list:
        for item in value:
            if not json_exact(item):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not json_exact(item):
                return False
        return True
    return False


def json_default(value: Any) -> Any:
    """How values JSON has no form for are converted (as ``json.dumps(default=...)`` would) when
    the client did not ask for pickles. msgspec already turns tuples and sets into arrays,
    dataclasses and attrs classes into objects, enums into their values, datetimes, dates and
    times into ISO 8601 strings, Decimals and UUIDs into strings, and nested bytes into base64;
    this adds numpy arrays (``tolist()``) and numpy scalars (``item()``)."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__.startswith("numpy"):
        return tolist()
    raise TypeError(f"no JSON form for {type(value).__module__}.{type(value).__qualname__}")


_json_converting = msgspec.json.Encoder(enc_hook=json_default)  # see to_json


def encode_value(value: Any, *, accept_pickle: bool) -> tuple[bytes, str]:
    """A result's or chunk's bytes, and their content type (JSON, octets, pickle)."""
    kind = type(value)
    if kind is bytes:
        return value, OCTETS
    if accept_pickle:
        if exact_json(value):
            try:
                return _json_encoder.encode(value), JSON
            except UnicodeEncodeError:
                pass  # a str with a lone surrogate (os.fsdecode makes them): no JSON text carries it
        try:
            return pickle.dumps(value, protocol=5), PICKLE
        except Exception:
            pass  # not picklable: the conversions below may still carry it
    # Without pickles, whether JSON carries the value exactly makes no difference to its JSON
    # (a value it does not is converted the same way): not asked, the check costs more than the
    # encoding, once per chunk of a stream.
    if kind is float and not math.isfinite(value):  # as Snakepit's serializer sends one ("NaN"...)
        return non_finite_json(value), JSON
    if kind is bytearray or kind is memoryview:
        return bytes(value), OCTETS
    return to_json(value), JSON


def non_finite_json(value: float) -> bytes:
    """A float JSON has no number for, as the JSON string Snakepit's serializer sends for it
    (under a ``.float`` type): ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``. Nested in a list
    or dict, such a float is ``null``, as Snakepit's JSON encoder writes it."""
    return b'"NaN"' if math.isnan(value) else b'"Infinity"' if value > 0 else b'"-Infinity"'


def to_json(value: Any) -> bytes:
    """``value`` as JSON, converted as :func:`json_default` documents where JSON has no form for
    it (bytes nested in it become base64); ``serialization_error`` if it cannot be."""
    try:
        return _json_converting.encode(value)
    except RecursionError:
        raise too_deep(f"a value of type {type(value).__qualname__}") from None
    except (TypeError, ValueError, msgspec.EncodeError, OverflowError) as exc:  # ValueError: a lone surrogate, too
        raise errors.validation(
            Reason.SERIALIZATION_ERROR,
            f"cannot send a value of type {type(value).__qualname__} as JSON: {exc}",
            type=type(value).__qualname__,
        ) from None

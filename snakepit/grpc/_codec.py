"""Values on the bridge protocol: parameters in, results and chunks out. Pure logic.

Parameters are ``google.protobuf.Any``: ``type_url`` ``type.googleapis.com/snakepit.<type>`` and
``value`` the UTF-8 JSON of the argument, decoded whatever the type says -- except that under a
type ending ``.float`` the JSON strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` are those
floats, as Snakepit's serializer sends them. A type ending
``.binary`` takes its bytes from ``binary_parameters[name]`` and passes them as ``bytes``; request
metadata ``binary_format:<name>`` = ``pickle`` asks for them to be unpickled, which only a server
started with ``allow_pickle=True`` does (unpickling runs the sender's code).

A float result JSON has no number for (NaN, an infinity) travels as Snakepit's serializer sends
it: the JSON string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, an ``ExecuteToolResponse``'s
``result`` typed ``snakepit.float``; nested in a list or dict it is ``null``.

Results and chunks travel as :mod:`snakepit._encoding` encodes them, one function for both sides
of a worker's pipes: JSON when JSON carries them exactly, ``bytes`` raw, anything else pickled if
the client asked for it (request metadata ``accept`` = ``pickle``: the Python client does, it
trusts its server), otherwise converted or refused as ``serialization_error``.
"""

from __future__ import annotations

import base64
import math
import pickle
from collections.abc import Mapping, MutableMapping
from typing import Any

import msgspec

from snakepit import _errors as errors
from snakepit._encoding import JSON as JSON
from snakepit._encoding import OCTETS as OCTETS
from snakepit._encoding import PICKLE as PICKLE
from snakepit._encoding import encode_value as encode_value
from snakepit._encoding import exact_json as exact_json
from snakepit._encoding import non_finite_json as non_finite_json
from snakepit._encoding import to_json as to_json
from snakepit._encoding import too_deep as too_deep
from snakepit._errors import Reason

TYPE_PREFIX = "type.googleapis.com/snakepit."
# How Snakepit's serializer sends a float JSON has no number for: as a JSON string, under a type
# ending ".float" (only there is the string taken for a float).
_NON_FINITE = {b'"NaN"': math.nan, b'"Infinity"': math.inf, b'"-Infinity"': -math.inf}


# The string metadata of a response or chunk. Keys beginning "snakepit-" are the server's: a
# tool's own keys of that form travel only in its exact dict (ATTACHED).
RESERVED = "snakepit-"
CONTENT_TYPE = "snakepit-content-type"  # how data or binary_result is encoded, when it is not JSON
PLAIN_CONTENT_TYPE = "content_type"  # the same, for clients of older versions, unless the tool has that key
ATTACHED = "snakepit-metadata"  # the tool's metadata of a chunk exactly, as JSON...
ATTACHED_PICKLE = "snakepit-metadata-pickle"  # ...or pickled (base64), for a client that takes pickles
CAPACITY = "snakepit-capacity"  # InitializeSession's trailing metadata: calls the pool runs at once
FINAL = "snakepit-final"  # on a final chunk: the server's account of the stream (JSON), whatever the tool's keys


class PickleRefused(errors.ValidationError):
    """A client sent a pickled parameter to a server that does not unpickle (PERMISSION_DENIED)."""


def message_limit(max_message_mb: Any) -> int:
    """The byte bound of a message, from the ``max_message_mb`` option both ends take."""
    if not isinstance(max_message_mb, (int, float)) or isinstance(max_message_mb, bool) or max_message_mb <= 0:
        raise errors.validation(Reason.INVALID_CONFIG, f"max_message_mb must be positive, got {max_message_mb!r}")
    return int(max_message_mb * 1024 * 1024)


def decode_parameters(
    parameters: Mapping[str, Any], binary: Mapping[str, bytes], metadata: Mapping[str, str], *, allow_pickle: bool
) -> dict[str, Any]:
    """A tool's arguments from an ``ExecuteToolRequest``'s parameters (``Any`` messages)."""
    args: dict[str, Any] = {}
    for name, value in parameters.items():
        if value.type_url.endswith(".binary"):
            if name not in binary:
                raise _invalid(f"parameter {name!r} says binary, but binary_parameters has no {name!r}")
            args[name] = _binary(name, binary[name], metadata, allow_pickle)
            continue
        if value.type_url.endswith(".float") and value.value in _NON_FINITE:
            args[name] = _NON_FINITE[value.value]
            continue
        try:
            args[name] = msgspec.json.decode(value.value) if value.value else None
        except msgspec.DecodeError as exc:
            raise _invalid(f"parameter {name!r} is not valid JSON: {exc}") from None
        except RecursionError:  # msgspec's decoder recurses per level of nesting
            raise too_deep(f"parameter {name!r}") from None
    for name, data in binary.items():  # bytes with no Any beside them are binary parameters too
        if name not in args:
            args[name] = _binary(name, data, metadata, allow_pickle)
    return args


def _binary(name: str, data: bytes, metadata: Mapping[str, str], allow_pickle: bool) -> Any:
    if metadata.get(f"binary_format:{name}", "") != "pickle":
        return bytes(data)
    if not allow_pickle:
        raise PickleRefused(
            errors.Category.VALIDATION,
            Reason.SERIALIZATION_ERROR,
            f"parameter {name!r} is pickled, and this server does not unpickle what clients send "
            "(start it with allow_pickle=True to trust them)",
            {"parameter": name},
        )
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise errors.validation(
            Reason.SERIALIZATION_ERROR, f"parameter {name!r} could not be unpickled: {type(exc).__name__}: {exc}"
        ) from None


def _invalid(message: str) -> errors.ValidationError:
    return errors.validation(Reason.INVALID_ARGUMENTS, message)


def decode_value(data: bytes, content_type: str) -> Any:
    """The client's side of :func:`encode_value`."""
    if content_type == OCTETS:
        return bytes(data)
    if content_type == PICKLE:
        return pickle.loads(data)
    try:
        return msgspec.json.decode(data) if data else None
    except RecursionError:
        raise too_deep("a value received") from None


def encode_json(value: Any) -> bytes:
    """JSON for metadata and error payloads (never pickled)."""
    return msgspec.json.encode(value, enc_hook=_as_text)


def _as_text(value: Any) -> Any:
    return repr(value)


def text(value: str) -> str:
    """``value`` as protobuf's string fields take it: valid UTF-8 (a lone surrogate, which
    ``os.fsdecode`` makes, becomes its escape)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()
    return value


def set_content_type(metadata: MutableMapping[str, str], content_type: str) -> None:
    """Say how a result's or chunk's bytes are encoded, beside whatever the tool put there."""
    metadata[CONTENT_TYPE] = content_type
    if PLAIN_CONTENT_TYPE not in metadata:
        metadata[PLAIN_CONTENT_TYPE] = content_type


def content_type(metadata: Mapping[str, str]) -> str:
    """The client's side of :func:`set_content_type`."""
    return metadata.get(CONTENT_TYPE, JSON)


def attach_metadata(metadata: MutableMapping[str, str], attached: Mapping[Any, Any], *, accept_pickle: bool) -> None:
    """What a tool attached to a chunk, on its ``ToolChunk``: each value a string (a ``str`` as it
    is, any other value as JSON), and the whole dict exactly under ``snakepit-metadata`` (JSON;
    pickled instead, for a client that takes pickles, when JSON would not give it back as it is).
    Keys beginning ``snakepit-`` are the server's: the tool's travel in the dict only."""
    for key, value in attached.items():
        name = text(str(key))
        if not name.startswith(RESERVED):
            metadata[name] = text(value) if type(value) is str else _json_text(value)
    if accept_pickle and not exact_json(attached):
        try:
            metadata[ATTACHED_PICKLE] = base64.b64encode(pickle.dumps(attached, protocol=5)).decode()
            return
        except Exception:
            pass  # not picklable: as JSON, converted
    try:
        whole = encode_json(attached).decode()
    except Exception:  # keys JSON has no form for
        whole = _json_text({str(key): value for key, value in attached.items()})
    metadata[ATTACHED] = text(whole)


def _json_text(value: Any) -> str:
    try:
        return text(encode_json(value).decode())
    except Exception:  # a value nested too deep, or keys JSON has no form for
        return text(repr(value))


def attached_metadata(metadata: Mapping[str, str]) -> Any:
    """The client's side of :func:`attach_metadata`: the tool's dict, or ``None``."""
    if ATTACHED_PICKLE in metadata:
        return pickle.loads(base64.b64decode(metadata[ATTACHED_PICKLE]))
    if ATTACHED in metadata:
        return msgspec.json.decode(metadata[ATTACHED])
    return None

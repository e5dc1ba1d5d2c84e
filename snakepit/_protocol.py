"""The wire between the owner and its workers: typed messages in length-prefixed msgpack frames.

A frame is a 4-byte little-endian payload length followed by one msgpack-encoded message. Messages
are ``msgspec`` structs encoded as tagged arrays, so the decoder checks their shape and the hot
path (a ``Chunk``) costs one small array per item.

User values (arguments, results, chunk data) travel as msgpack when msgpack carries them exactly:
``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` and ``list``/``dict`` of those (dict
keys ``str`` or ``int``). Anything else -- a tuple, a set, a numpy array, a dataclass, a subclass of
a builtin -- would come back as something else, so it is pickled (protocol 5) and sent as a
msgpack extension instead: never silently lossy. A value that cannot be pickled either is a
``serialization_error`` naming its type.

Pipes: ``requests`` (owner -> worker: boot, calls, shutdown) is read by the worker's main thread;
``control`` (owner -> worker: cancel, ping) by a worker thread so a running tool can be cancelled;
``responses`` (worker -> owner: ready, results, chunks, stream ends, failures) is read by whoever
holds the worker; ``events`` (worker -> owner: heartbeat answers, log records) by the supervisor.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import msgspec
from msgspec.msgpack import Ext

from snakepit import _errors as errors
from snakepit._adapter import ToolSpec
from snakepit._encoding import CONTENT_TYPES, JSON, Encoded
from snakepit._encoding import encode_value as encode_value_as
from snakepit._errors import Reason
from snakepit._remote import tool_error

__all__ = [
    "Boot",
    "Call",
    "Batch",
    "Shutdown",
    "Cancel",
    "Ping",
    "Ready",
    "StartFailed",
    "Result",
    "Chunk",
    "Chunks",
    "End",
    "Failure",
    "BatchResult",
    "Pong",
    "Log",
    "encode_value",
    "encoded_wire",
    "json_ext",
    "encode_with",
    "exact",
    "exact_args",
    "exact_arg_lists",
    "decode_value",
    "encode_frame",
    "FrameWriter",
    "FrameReader",
]

PICKLE_EXT = 1
SHARED_EXT = 2  # a pickle whose large buffers travel beside the frame (see backends/process/segments.py)
# ENCODED_EXT + i: a value the worker encoded for a call's ``encode`` option, its bytes of content
# type CONTENT_TYPES[i] (see encoded_wire).
ENCODED_EXT = 3
# Buffers at least this large leave the pickle when the transport can share memory: below it, the
# few system calls of a shared segment cost more than copying the bytes through the pipe.
SHARE_THRESHOLD = 256 << 10
HEADER = struct.Struct("<I")
MAX_FRAME = (1 << 32) - 1


class _Msg(msgspec.Struct, array_like=True, tag_field="t", omit_defaults=False):
    pass


# owner -> worker, requests pipe


class Boot(_Msg, tag=1):
    """First frame a worker reads: where to run and what to host."""

    worker_id: int
    sys_path: list[str]
    cwd: str
    adapter: Any  # "module:Class", or an Ext holding the cloudpickled class
    adapter_args: Any
    log_level: int  # the owner's level for worker logs: records below it are not even sent
    telemetry: bool = False  # the owner listens to telemetry: tools' emit() and span() send it
    threads: int = 1  # calls run at once, each on a thread of its own (threads_per_worker)


class Call(_Msg, tag=2):
    id: int
    tool: str
    correlation: str | None  # the call's correlation id (see snakepit.telemetry)
    trace: str | None  # the W3C traceparent of the owner's span for the call, when traced
    args: Any
    encode: str | None  # "json" or "pickle": send values encoded so (see encoded_wire), else None
    batch: int | None  # with encode, a stream's: pack up to this many chunks at hand per value
    stream: bool  # last, always: is_stream_call reads it from a frame's last byte


class Shutdown(_Msg, tag=3):
    pass


class Batch(_Msg, tag=6):
    """Many calls of one tool, run in order (``pool.map``).

    ``items`` is the encoded list of args dicts, kept raw so that the worker can decode it
    straight into the tool's parameter structs (one C call checks and converts the batch).
    """

    id: int
    tool: str
    items: msgspec.Raw
    correlation: str | None = None
    trace: str | None = None


# owner -> worker, control pipe


class Cancel(_Msg, tag=4):
    """Cancel exactly these calls (a call, or the batches a map has queued on one worker)."""

    ids: list[int]


class Ping(_Msg, tag=5):
    seq: int


class Listen(_Msg, tag=8):
    """Send tools' telemetry to the owner from now on (``on``), or stop: the owner has gained its
    first listener, or lost its last (see :mod:`snakepit.telemetry`)."""

    on: bool


class Credit(_Msg, tag=7):
    """A worker running calls on several threads may send ``count`` more frames of stream ``id``
    (the owner has taken that many): one slow consumer holds back its own stream only."""

    id: int
    count: int


# worker -> owner, responses pipe


class Ready(_Msg, tag=10):
    pid: int
    tools: list[ToolSpec]


class StartFailed(_Msg, tag=11):
    message: str
    traceback: str


class Result(_Msg, tag=12):
    id: int
    value: Any


class Chunk(_Msg, tag=13):
    id: int
    data: Any
    final: bool = False
    metadata: Any = None


class Chunks(_Msg, tag=17):
    """Consecutive plain items of one stream, queued during a burst and sent as one frame."""

    id: int
    items: list[Any]


class BatchResult(_Msg, tag=19):
    """One value per item that ran (``None`` where it failed) and the failures:
    ``[index, category, reason, message, details, traceback]``, and the pickled exception after
    those where the tool raised one that pickles."""

    id: int
    values: Any
    failures: list[list[Any]]
    one_by_one: bool = False  # ``values`` is a list of separately pickled values (see the worker)


class End(_Msg, tag=14):
    """A stream is over: the generator finished, yielded its final chunk, or was cancelled."""

    id: int
    cancelled: bool = False


class Failure(_Msg, tag=15):
    id: int
    category: str
    reason: str
    message: str
    details: dict[str, Any]
    traceback: str | None = None
    exception: bytes | None = None  # what the tool raised, pickled, if it pickles (see snakepit._remote)


# worker -> owner, events pipe


class Pong(_Msg, tag=16):
    seq: int


class Log(_Msg, tag=18):
    """A record the tool logged with :mod:`logging`, relayed to the owner's ``snakepit.worker``."""

    level: int
    name: str
    message: str
    correlation_id: str | None = None  # of the call that logged it


class Telemetry(_Msg, tag=20):
    """A tool's telemetry event (see :mod:`snakepit.telemetry`), as the dict ``on_event`` gets."""

    fields: dict[str, Any]


ToWorker = Boot | Call | Batch | Shutdown | Cancel | Ping | Credit | Listen
FromWorker = Ready | StartFailed | Result | Chunk | Chunks | End | Failure | BatchResult
Event = Pong | Log | Telemetry

TERMINAL = (Result, End, Failure, BatchResult)


# A call is encoded (and refused if it cannot travel) before it has a worker, but its id is drawn
# when it is sent, so that each worker sees its calls' ids in increasing order. The frame is
# encoded with a placeholder id that msgpack writes as a fixed-width uint64, and the real id is
# stamped over it in place: no copy of a large call.
_UNSTAMPED = 1 << 63
_UINT64 = 0xCF
_TRUE = 0xC3
_CALL_TAG_AT = HEADER.size + 1  # after the frame header and the fixarray header
_CALL_ID_AT = HEADER.size + 3  # after the frame header, the fixarray header, the tag and the uint64 marker
_CALL_ID = struct.Struct(">Q")


def call_frame(
    tool: str,
    args: dict[str, Any],
    stream: bool,
    share: Share | None = None,
    correlation: str | None = None,
    trace: str | None = None,
    exact: bool | None = None,
    encode: str | None = None,
    batch: int | None = None,
) -> bytearray:
    """A ``Call`` frame without its id (see :func:`stamp_call_id`); ``serialization_error`` if
    the arguments cannot travel. ``exact``: what :func:`exact_args` says of them, if the caller
    asked already. (:func:`encode_with`, unrolled: this runs once per call.)"""
    frame = None
    if exact_args(args) if exact is None else exact:
        try:
            frame = encode_frame(Call(_UNSTAMPED, tool, correlation, trace, args, encode, batch, stream))
        except REFUSED:
            pass
    if frame is None:
        frame = encode_frame(
            Call(_UNSTAMPED, tool, correlation, trace, pickled(args, _cloud_dumps, share), encode, batch, stream)
        )
    if frame[_CALL_ID_AT - 1] != _UINT64:  # the layout of Call changed: the stamp would corrupt it
        raise AssertionError("unexpected Call frame layout")
    return frame


def stamp_call_id(frame: bytearray, call_id: int) -> None:
    _CALL_ID.pack_into(frame, _CALL_ID_AT, call_id)


# A worker streaming many small chunks encodes each one's envelope once per stream, not once per
# chunk: Chunk(id, data, False, None) is the array [tag, id, data, false, nil], so a frame is the
# part before ``data``, the data, and a fixed two-byte tail; and Chunks(id, [...]) is a prefix and
# an array32 whose count is patched when the batch closes. A batched stream's batch is a Chunks
# of one item, a bin32 holding a JSON array, whose length is patched when it closes (see
# _backends.process.spill).
_CHUNK_TAIL = b"\xc2\xc0"  # final=False, metadata=None
_ARRAY32 = b"\xdd"
_BIN32 = b"\xc6"
ARRAY_BYTES = 1 << 20  # the most a batched stream's JSON array holds, unless one element is larger

STREAM_WINDOW = 64  # frames of one stream the owner may not have taken yet (threads_per_worker > 1)
BATCH_BYTES = 64 << 10  # the most a batch of small chunks holds there: a window is at most 4 MiB of them


class ChunkLayout(NamedTuple):
    head: bytearray  # a frame header's room, then a Chunk of the call up to its data
    tail: bytes  # what follows the data in that frame
    batch_head: bytes  # a frame header's room, then a Chunks of the call whose array32 count is 0
    array_head: bytes  # the same with a count of 1, then a bin32 of length 0 and "["


def chunk_layout(call_id: int) -> ChunkLayout:
    """The fixed parts of ``call_id``'s chunk frames (see above), checked against msgspec's own
    encoding of the messages."""
    envelope = msgspec.msgpack.encode(Chunk(call_id, None, False, None))
    none_then_tail = b"\xc0" + _CHUNK_TAIL
    empty = msgspec.msgpack.encode(Chunks(call_id, []))
    if not envelope.endswith(none_then_tail) or not empty.endswith(b"\x90"):
        raise AssertionError("unexpected Chunk frame layout")
    head = bytearray(HEADER.size) + envelope[: -len(none_then_tail)]
    batch_head = bytes(HEADER.size) + empty[:-1] + _ARRAY32
    return ChunkLayout(head, _CHUNK_TAIL, batch_head + b"\0\0\0\0", batch_head + b"\0\0\0\1" + _BIN32 + b"\0\0\0\0[")


def is_stream_call(frame: bytes | bytearray) -> bool:
    """Whether an encoded frame (from :func:`call_frame`, or a ``Batch``) is a streaming ``Call``,
    read from its layout -- the tag is its second byte, the stream flag its last -- without
    decoding its arguments."""
    return frame[_CALL_TAG_AT] == Call.__struct_config__.tag and frame[-1] == _TRUE


def failure(call_id: int, error: errors.SnakepitError) -> Failure:
    return Failure(call_id, error.category, error.reason, error.message, error.details, error.traceback)


def raise_failure(msg: Failure) -> None:
    raise tool_error(msg.category, msg.reason, msg.message, msg.details, msg.traceback, msg.exception)


# ---------------------------------------------------------------------------------------------
# Values

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})

# msgpack carries containers exactly only up to this depth; deeper ones are pickled. Decoding
# msgpack recurses (into the receiver's recursion limit, wherever its stack is), unpickling does
# not, so a deep value never fails on the receiving side, and the check itself stays far from the
# sender's recursion limit (three frames per level).
MAX_DEPTH = 100


def _plain(
    value: Any,
    depth: int = 0,
    _scalars: frozenset = _SCALARS,
    type: type = type,
    str: type = str,
    int: type = int,
    dict: type = dict,
) -> bool:
    """True when msgpack round-trips ``value`` exactly (same types, same structure).

    On the hot path of every chunk and every map item: builtins are bound as defaults to skip
    global look-ups, and a list (a batch of argument dicts) is checked with C-level passes.
    """
    kind = type(value)
    if kind is dict:
        if depth >= MAX_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is not str and type(key) is not int:
                return False
            if type(item) not in _scalars and not _plain(item, depth + 1):
                return False
        return True
    if kind is list:
        return depth < MAX_DEPTH and _plain_list(value, depth)
    return kind in _scalars


_KEYS = frozenset({str, int})
_SCALARS_AND_DICT = _SCALARS | {dict}
_chain = itertools.chain.from_iterable


def _plain_list(items: list[Any], depth: int) -> bool:
    kinds = set(map(type, items))
    if kinds <= _SCALARS:
        return True
    if kinds <= _SCALARS_AND_DICT and depth + 1 < MAX_DEPTH:
        dicts = items if kinds == {dict} else [item for item in items if type(item) is dict]
        if not set(map(type, _chain(dicts))) <= _KEYS:  # iterating a dict gives its keys
            return False
        if set(map(type, _chain(map(dict.values, dicts)))) <= _SCALARS:
            return True
    # Containers inside: the general check, item by item.
    depth += 1
    return all(type(item) in _SCALARS or _plain(item, depth) for item in items)


# How a process that lends shared memory pickles a value whose large buffers travel beside its
# frame (set by the transport that lends it: see backends/process/segments.py); None: as any.
lending_dumps: Callable[[Any, Any, Any], bytes] | None = None


def _fast_dumps(value: Any, buffer_callback: _OutOfBand | None = None) -> bytes:
    """Pickle with the C pickler; fall back to cloudpickle for what it cannot reference by name."""
    try:
        if buffer_callback is not None and lending_dumps is not None:
            return lending_dumps(value, buffer_callback, pickle.Pickler)
        return pickle.dumps(value, protocol=5, buffer_callback=buffer_callback)
    except Exception:
        if buffer_callback is not None:
            buffer_callback.buffers.clear()  # what the failed attempt set aside
        return _cloud_dumps(value, buffer_callback)


def _cloud_dumps(value: Any, buffer_callback: _OutOfBand | None = None) -> bytes:
    import cloudpickle

    if buffer_callback is not None and lending_dumps is not None:
        return lending_dumps(value, buffer_callback, cloudpickle.Pickler)
    return cloudpickle.dumps(value, protocol=5, buffer_callback=buffer_callback)


Share = Callable[[str, bytes, "list[memoryview]"], Ext]
"""How a transport that shares memory carries large buffers: ``share(kind, data, buffers)`` places
``buffers`` beside the frame and returns the extension that stands for the value ("pickle": the
pickle ``data`` of a value whose out-of-band ``buffers`` these are; "bytes": one ``bytes`` value)."""


class _OutOfBand:
    """A pickler's ``buffer_callback``: large contiguous buffers are kept out of the pickle."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: it stays in the pickle
            return True
        if raw.nbytes < SHARE_THRESHOLD:
            return True
        self.buffers.append(raw)
        return False


def pickled(value: Any, dumps: Callable[..., bytes] = _fast_dumps, share: Share | None = None) -> Ext:
    """``value`` as a pickle extension, or a ``serialization_error`` naming what failed. With
    ``share``, its large buffers travel beside the frame."""
    try:
        if share is None:
            return Ext(PICKLE_EXT, dumps(value))
        out_of_band = _OutOfBand()
        data = dumps(value, out_of_band)
        return share("pickle", data, out_of_band.buffers) if out_of_band.buffers else Ext(PICKLE_EXT, data)
    except Exception as exc:
        raise _unserializable(value, exc, dumps) from None


def shares(value: Any, share: Share | None) -> bool:
    """A ``bytes`` value large enough to travel beside its frame (other values decide as they
    are pickled)."""
    return share is not None and type(value) is bytes and len(value) >= SHARE_THRESHOLD


def encode_value(value: Any, dumps: Callable[[Any], bytes] = _fast_dumps) -> Any:
    """``value`` itself when msgpack carries it exactly, else a pickle extension."""
    return value if exact(value) else pickled(value, dumps)


T = TypeVar("T")

# What msgpack refuses in a value that passed the exactness check: an int beyond 64 bits, a str
# with lone surrogates, a dict key of another type (argument dicts' keys are not checked), and
# nesting the encoder cannot follow from where it was called. Pickle carries all of them, or
# names what it cannot carry.
REFUSED = (OverflowError, UnicodeEncodeError, TypeError, RecursionError)


def exact(value: Any) -> bool:
    """msgpack round-trips ``value`` exactly."""
    try:
        return type(value) in _SCALARS or _plain(value)
    except RecursionError:  # called from deep in the caller's stack: let pickle decide
        return False


def exact_args(args: dict[str, Any]) -> bool:
    """:func:`exact` for a call's arguments. Their keys are parameter names, checked against the
    signature in the worker, so only the values need the check."""
    values = args.values()
    return set(map(type, values)) <= _SCALARS or all(map(exact, values))


def exact_arg_lists(items: list[dict[str, Any]]) -> bool:
    """:func:`exact_args` for every argument dict of a batch, in one C-level pass when the values
    are all scalars (a map's tiny tasks)."""
    return set(map(type, _chain(map(dict.values, items)))) <= _SCALARS or all(map(exact_args, items))


def encode_with(
    encode: Callable[[Any], T],
    value: Any,
    *,
    exact: Callable[[Any], bool] = exact,
    dumps: Callable[..., bytes] = _fast_dumps,
    share: Share | None = None,
) -> T:
    """``encode(value on the wire)``: the value itself when ``exact`` says msgpack carries it
    exactly, else pickled (its large buffers beside the frame, with ``share``). Raises
    ``serialization_error`` when nothing can carry it."""
    if exact(value):
        if shares(value, share):
            return encode(share("bytes", b"", [memoryview(value)]))  # type: ignore[misc]
        try:
            return encode(value)
        except REFUSED:
            pass
    return encode(pickled(value, dumps, share))


def wire_value(
    value: Any, *, exact: Callable[[Any], bool] = exact, dumps: Callable[..., bytes] = _fast_dumps, share: Share | None = None
) -> Any:
    """``value`` as it is to travel inside a message that is encoded later: itself once msgpack
    has shown it carries it (exactly), else pickled. Raises ``serialization_error``."""
    return encode_with(_carried, value, exact=exact, dumps=dumps, share=share)


def _carried(wire: Any) -> Any:
    _ENCODER.encode(wire)  # raises what REFUSED lists if msgpack cannot carry it
    return wire


class Shared:
    """A value received with its large buffers in shared memory (mapped, not copied): decoded by
    :func:`decode_value` like a pickle extension. Its mappings go when it, or the value decoded
    from it, is dropped."""

    __slots__ = ("kind", "data", "buffers")

    def __init__(self, kind: str, data: bytes, buffers: list[memoryview]) -> None:
        self.kind = kind
        self.data = data
        self.buffers = buffers

    def load(self) -> Any:
        """The value, once: from then on only the value holds the shared memory, so that
        dropping it gives the memory back (the message that carried it may live on)."""
        buffers, self.buffers = self.buffers, []
        if self.kind == "bytes":
            return bytes(buffers[0])  # bytes must be bytes: the second copy
        return pickle.loads(self.data, buffers=buffers)


PACKED = (Ext, Shared)  # values still in their wire form: ``type(v) in PACKED`` means decode it

_ENCODED_CODES = {content_type: ENCODED_EXT + index for index, content_type in enumerate(CONTENT_TYPES)}
_ENCODED_TYPES = dict(enumerate(CONTENT_TYPES, ENCODED_EXT))


def encoded_wire(value: Any, encode: str) -> Any:
    """The worker's side of a call's ``encode`` option: ``value`` encoded as the owner is to hand
    it on (an :class:`~snakepit._encoding.Encoded` once received), or None for a value of a
    shared-memory size (at least ``SHARE_THRESHOLD`` encoded), which travels as any other and
    is encoded by the owner. Raises ``serialization_error`` where the encoding does.

    JSON, by far the most common, travels as a plain msgpack ``bin``, which the owner's decoder
    makes a ``bytes`` in C, with no extension hook per value: in such a call, a ``bytes`` value
    from the worker is JSON (a tool's own ``bytes`` goes as ``application/octet-stream``, or
    through shared memory when large). Other content types travel as extensions."""
    if type(value) is bytes and len(value) >= SHARE_THRESHOLD:
        return None
    data, content_type = encode_value_as(value, accept_pickle=encode == "pickle")
    if len(data) >= SHARE_THRESHOLD:
        return None
    return data if content_type == JSON else Ext(_ENCODED_CODES[content_type], data)


def json_ext(data: bytes) -> Ext:
    """JSON bytes as an extension, which the owner takes as encoded JSON whether or not it
    expects its worker to encode (a plain ``bytes`` is a JSON value only where it does)."""
    return Ext(_ENCODED_CODES[JSON], data)


def received_ext(code: int, data: memoryview) -> Any:
    """An extension as a frame reader's ``ext_hook`` returns it: a value the worker encoded is
    its :class:`~snakepit._encoding.Encoded` at once (the hot path of a stream whose values the
    owner forwards); any other, an ``Ext`` for :func:`decode_value`."""
    content_type = _ENCODED_TYPES.get(code)
    if content_type is not None:
        return Encoded(bytes(data), content_type)
    return Ext(code, bytes(data))  # a copy: the frame's buffer is reused


def decode_value(value: Any) -> Any:
    kind = type(value)
    if kind is Ext or kind is Shared:
        if kind is Ext and value.code != PICKLE_EXT:
            if value.code in _ENCODED_TYPES:
                return Encoded(value.data, _ENCODED_TYPES[value.code])
            raise errors.validation(Reason.SERIALIZATION_ERROR, f"unknown value extension {value.code}")
        try:
            return pickle.loads(value.data) if kind is Ext else value.load()
        except Exception as exc:
            raise errors.validation(
                Reason.SERIALIZATION_ERROR,
                f"cannot deserialize value: {type(exc).__name__}: {exc}",
            ) from None
    return value


def _unserializable(value: Any, exc: BaseException, dumps: Callable[[Any], bytes]) -> errors.ValidationError:
    path, culprit = _find_culprit(value, "$", dumps)
    where = "" if path == "$" else f" at {path}"
    return errors.validation(
        Reason.SERIALIZATION_ERROR,
        f"cannot serialize value of type {_type_label(culprit)}{where}: {exc}",
        type=_type_label(culprit),
        path=path,
    )


def _type_label(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _find_culprit(value: Any, path: str, dumps: Callable[[Any], bytes], depth: int = 0) -> tuple[str, Any]:
    """The innermost element of a container that fails to pickle (with ``dumps``), to name it in
    the error."""
    if depth < 32 and type(value) in (dict, list, tuple, set, frozenset):
        items = value.items() if type(value) is dict else enumerate(value)
        for key, item in items:
            try:
                dumps(item)
            except Exception:
                return _find_culprit(item, f"{path}[{key!r}]", dumps, depth + 1)
    return path, value


# ---------------------------------------------------------------------------------------------
# Frames


_ENCODER = msgspec.msgpack.Encoder()  # msgspec encoders are thread-safe


def _frame_into(message: msgspec.Struct, buffer: bytearray) -> bytearray:
    _ENCODER.encode_into(message, buffer, HEADER.size)
    size = len(buffer) - HEADER.size
    if size > MAX_FRAME:
        raise errors.validation(Reason.SERIALIZATION_ERROR, f"message of {size} bytes exceeds the 4 GiB frame limit")
    HEADER.pack_into(buffer, 0, size)
    return buffer


def encode_frame(message: msgspec.Struct) -> bytearray:
    """The message as a frame of its own."""
    return _frame_into(message, bytearray(HEADER.size))


# A reused buffer keeps its largest size: one that grew past this is handed out, not kept, so a
# process that sent one big value once does not hold its size for good.
KEEP_BUFFER = 1 << 20


class FrameWriter:
    """Encodes messages into frames reusing one buffer, for a writer that sends one at a time."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray(64)

    def frame(self, message: msgspec.Struct) -> bytearray:
        """The message as a frame. The returned buffer is reused by the next call (unless big)."""
        frame = _frame_into(message, self._buffer)
        if len(frame) > KEEP_BUFFER:
            self._buffer = bytearray(64)
        return frame


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Blocking write of every byte (a pipe write may be partial if interrupted)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_READ_SIZE = 1 << 20  # the most one read of a pipe takes (the owner's: it reads into a reused buffer)
_BLOCKING_READ_SIZE = 1 << 16  # the worker's reads: a new bytes object each, so kept small


class FrameReader:
    """Splits bytes read from a pipe into decoded messages.

    Small frames are cut from each read; a frame larger than one read is received straight into a
    buffer of its final size, so a 100 MB result is copied once, not re-joined per read.

    The owner reads its non-blocking pipes (:meth:`read`) into one reused buffer: ``os.read`` of a
    megabyte allocates, and frees, a megabyte per call, which costs more than a small call's whole
    round trip. Decoded messages own their bytes, so reusing it is safe -- except a ``Batch``'s
    raw items, which reference it: the worker, the one reader of :meth:`read_blocking`, is done
    with each message before it reads again. The owner's buffer is a mapping of its own, not
    the allocator's: a pool replacing workers for hours makes and drops one per worker, and
    megabytes the C allocator hands out and takes back stay in its arenas (its threshold for
    mapping large blocks rises to the size of any it unmapped), which grows the owner's memory.
    """

    __slots__ = ("_decoder", "_rest", "_big", "_big_filled", "_buffer", "_pending", "_read_size", "received", "broken")

    def __init__(
        self, message_type: Any, ext_hook: Callable[[int, memoryview], Any] | None = None, read_size: int = _READ_SIZE
    ) -> None:
        self.received = 0  # bytes read from the pipe so far
        self._decoder = msgspec.msgpack.Decoder(message_type, ext_hook=ext_hook)
        self._rest = b""
        self._big: bytearray | None = None
        self._big_filled = 0
        self._read_size = read_size  # the most one read of a non-blocking pipe takes
        self._buffer: Any = None  # allocated at the first read; untouched pages cost nothing
        self._pending: list[Any] = []  # decoded by read_blocking, not yet returned (reversed)
        # An exception escaped a read (a MemoryError for a big frame, Ctrl-C between reading
        # bytes and keeping them): bytes may be lost, so no later message can be trusted.
        self.broken = False

    def read(self, fd: int) -> list[Any] | None:
        """Messages that are available now (maybe none); ``None`` once the writer has gone."""
        try:
            if self._big is not None:
                return self._read_big(fd)
            buffer = self._buffer
            if buffer is None:
                buffer = self._buffer = mmap.mmap(-1, self._read_size)
            size = os.readv(fd, (buffer,))
            if not size:
                return None
            self.received += size
            return self.feed(memoryview(buffer)[:size])
        except BlockingIOError:
            return []
        except BaseException:
            self.broken = True
            raise

    def feed(self, data: bytes | memoryview) -> list[Any]:
        if self._rest:
            data = self._rest + data
        decode = self._decoder.decode
        unpack = HEADER.unpack_from
        end = len(data)
        if end >= 4 and unpack(data, 0)[0] + 4 == end:  # exactly one frame: a reply, a call
            self._rest = b""
            return [decode(data[4:])]
        view = memoryview(data)
        pos = 0
        out: list[Any] = []
        while end - pos >= 4:
            size = unpack(data, pos)[0]
            stop = pos + 4 + size
            if stop > end:
                if size > _BLOCKING_READ_SIZE:
                    self._start_big(view[pos + 4 :], size)
                    self._rest = b""
                    return out
                break
            out.append(decode(view[pos + 4 : stop]))
            pos = stop
        self._rest = bytes(data[pos:]) if pos < end else b""  # a copy: the read buffer is reused
        return out

    def _start_big(self, head: memoryview, size: int) -> None:
        self._big = bytearray(size)
        self._big[: len(head)] = head
        self._big_filled = len(head)

    def _read_big(self, fd: int) -> list[Any] | None:
        big = self._big
        assert big is not None
        received = os.readv(fd, [memoryview(big)[self._big_filled :]])
        if received == 0:
            return None
        self.received += received
        self._big_filled += received
        if self._big_filled < len(big):
            return []
        self._big = None
        return [self._decoder.decode(big)]

    def read_blocking(self, fd: int) -> Any | None:
        """The next message from a blocking pipe (the worker's side); ``None`` at end of file."""
        pending = self._pending
        while not pending:
            if self._big is not None:
                messages = self._read_big(fd)
            else:
                buffer = self._buffer
                if buffer is None:
                    buffer = self._buffer = bytearray(_BLOCKING_READ_SIZE)
                size = os.readv(fd, (buffer,))
                self.received += size
                messages = self.feed(memoryview(buffer)[:size]) if size else None
            if messages is None:
                return None
            messages.reverse()
            pending += messages
        return pending.pop()

"""The wire format, without processes: frames, values, and the crash-safe send queue."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakepit import SnakepitError
from snakepit._backends.process import spill
from snakepit._backends.process.child.outbox import Outbox
from snakepit._protocol import (
    Chunk,
    Chunks,
    End,
    FrameReader,
    FromWorker,
    Result,
    _plain,
    chunk_layout,
    decode_value,
    encode_frame,
    encode_value,
)


@dataclass
class Pair:
    a: int
    b: int


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text() | st.integers(-5, 5), inner, max_size=4),
    max_leaves=20,
)
any_values = st.recursive(
    plain_values | st.builds(Pair, st.integers(), st.integers()) | st.integers(2**64, 2**80),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers(), max_size=3)
        | st.dictionaries(st.text() | st.tuples(st.integers()), inner, max_size=3)
    ),
    max_leaves=12,
)


def _same_types(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return all(_same_types(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return all(_same_types(x, y) for x, y in zip(a, b))
    return True


def _round_trip(value):
    reader = FrameReader(FromWorker)
    try:
        frame = encode_frame(Result(1, encode_value(value)))
    except OverflowError:
        from snakepit._protocol import pickled

        frame = encode_frame(Result(1, pickled(value)))
    (message,) = reader.feed(bytes(frame))
    return decode_value(message.value)


@settings(max_examples=300, deadline=None)
@given(any_values)
def test_every_value_round_trips_with_its_exact_types(value):
    back = _round_trip(value)
    assert back == value
    assert _same_types(back, value)  # tuple stays tuple, all the way down


@settings(max_examples=200, deadline=None)
@given(plain_values)
def test_plain_values_travel_as_msgpack(value):
    assert _plain(value)
    assert encode_value(value) is value


@pytest.mark.parametrize("value", [(1,), {1}, Pair(1, 2), bytearray(b"x"), [1, (2,)], {"a": {"b": (1,)}}, True.__class__, 1j])
def test_lossy_values_are_not_plain(value):
    assert not _plain(value)


def test_subclasses_of_builtins_are_not_plain():
    class MyStr(str):
        pass

    from collections import OrderedDict

    assert not _plain(MyStr("x")) and not _plain(OrderedDict(a=1)) and not _plain({"k": MyStr("v")})


def test_unpicklable_value_names_type_and_path():
    with pytest.raises(SnakepitError) as info:
        encode_value({"ok": 1, "bad": [1, threading.Lock()]})
    err = info.value
    assert (err.category, err.reason) == ("validation", "serialization_error")
    assert err.details["path"] == "$['bad'][1]" and "lock" in err.details["type"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=30), st.integers(1, 97))
def test_frames_survive_any_split_of_the_byte_stream(payloads, step):
    stream = b"".join(bytes(encode_frame(Chunk(7, p))) for p in payloads)
    reader = FrameReader(FromWorker)
    got = []
    for start in range(0, len(stream), step):
        got += reader.feed(stream[start : start + step])
    assert [m.data for m in got] == payloads


def test_a_frame_larger_than_one_read_is_received_whole():
    big = os.urandom(3 << 20)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    frame = bytes(encode_frame(Result(3, big)))
    writer = threading.Thread(target=lambda: (os.write(write_fd, frame[:10]), _write_all(write_fd, frame[10:])))
    writer.start()
    reader = FrameReader(FromWorker)
    messages = []
    import select

    while not messages:
        select.select([read_fd], [], [], 5)
        messages = reader.read(read_fd)
    writer.join()
    os.close(read_fd)
    os.close(write_fd)
    assert messages[0].value == big and reader.received == len(frame)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=200_000), min_size=1, max_size=12), st.integers(1, 70_000))
def test_both_readers_deliver_every_frame_intact_through_a_pipe(payloads, step):
    """The owner's reader reuses one buffer and the worker's reads into its own: a message
    decoded from one read must survive the next read overwriting that buffer. Frames of any size,
    split anyhow (some larger than a read: received whole)."""
    stream = b"".join(bytes(encode_frame(Chunk(7, p))) for p in payloads)
    for blocking in (False, True):
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, blocking)
        writer = threading.Thread(
            target=lambda write_fd=write_fd: [_write_all(write_fd, stream[i : i + step]) for i in range(0, len(stream), step)]
        )
        writer.start()
        reader = FrameReader(FromWorker)
        got = []
        import select

        while len(got) < len(payloads):
            if blocking:
                got.append(reader.read_blocking(read_fd))
            else:
                select.select([read_fd], [], [], 5)
                got += reader.read(read_fd)
        writer.join()
        os.close(write_fd)
        assert (reader.read_blocking(read_fd) if blocking else reader.read(read_fd)) is None  # end of file
        os.close(read_fd)
        assert [m.data for m in got] == payloads
        assert reader.received == len(stream)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the crash-safe send queue ----------------------------------------------------------------


def test_spill_salvage_recovers_queued_chunks_of_an_open_batch():
    """What a dead worker queued but never wrote is recovered from the shared segment."""
    fd = spill.create(1 << 16)
    owner_fd = os.dup(fd)
    writer = spill.SpillWriter(fd)
    empty = msgspec.msgpack.encode(Chunks(9, []))
    prefix = bytes(4) + empty[:-1] + b"\xdd\0\0\0\0"
    already_sent = 1234
    writer.start(already_sent)
    writer.append(bytes(encode_frame(End(8))))
    writer.open_batch(9, prefix)
    items = [{"n": i} for i in range(5)]
    for item in items:
        writer.add(msgspec.msgpack.encode(item))
    # The owner had read everything before the queue, and nothing of it.
    tail = spill.salvage(owner_fd, already_sent)
    messages = FrameReader(FromWorker).feed(tail)
    assert [type(m).__name__ for m in messages] == ["End", "Chunks"]
    assert messages[1].items == items
    # Had the owner already read the End frame, only the batch would be new.
    end_len = len(encode_frame(End(8)))
    (batch,) = FrameReader(FromWorker).feed(spill.salvage(owner_fd, already_sent + end_len))
    assert batch.items == items
    # Nothing is claimed twice once it was all received.
    assert spill.salvage(owner_fd, already_sent + len(tail)) == b""
    writer.clear()
    assert spill.salvage(owner_fd, already_sent) == b""
    os.close(owner_fd)


def test_spill_salvage_closes_an_open_array_batch_at_its_last_whole_element():
    """A batched stream's array, queued but never written, is recovered as a whole JSON array of
    the elements queued; one opened with no element yet is dropped."""
    layout = chunk_layout(9)
    fd = spill.create(1 << 16)
    owner_fd = os.dup(fd)
    writer = spill.SpillWriter(fd)
    writer.start(0)
    writer.open_batch(~9, layout.array_head, array=True)
    elements = [{"n": i} for i in range(5)]
    for element in elements:
        writer.add(msgspec.json.encode(element) + b",")
    (batch,) = FrameReader(FromWorker).feed(spill.salvage(owner_fd, 0))
    assert batch.id == 9 and len(batch.items) == 1 and json.loads(batch.items[0]) == elements
    writer.close_batch()  # as the writer thread closes it: the same bytes
    (closed,) = FrameReader(FromWorker).feed(bytes(writer.view(0, writer.committed)))
    assert closed.items == batch.items
    writer.clear()
    writer.start(0)
    writer.append(bytes(encode_frame(End(8))))
    writer.open_batch(~9, layout.array_head, array=True)
    messages = FrameReader(FromWorker).feed(spill.salvage(owner_fd, 0))
    assert [type(m).__name__ for m in messages] == ["End"]
    os.close(owner_fd)


def _sent_through_a_pipe(produce) -> list:
    """The messages an :class:`Outbox` delivers through a real pipe while ``produce(outbox)``
    sends (an ``End`` after), as the owner's reader decodes them; the stream items of its
    ``Chunk`` and ``Chunks`` frames first, in order."""
    read_fd, write_fd = os.pipe()
    out = Outbox(write_fd, spill.create(1 << 16))
    received = []
    reader = FrameReader(FromWorker)

    def drain():
        while True:
            data = os.read(read_fd, 1 << 16)
            if not data:
                return
            received.extend(reader.feed(data))

    consumer = threading.Thread(target=drain)
    consumer.start()
    produce(out)
    out.send(End(5))
    out.flush()
    os.close(write_fd)
    consumer.join(10)
    os.close(read_fd)
    assert isinstance(received[-1], End)
    items = []
    for message in received:
        if isinstance(message, Chunk):
            items.append(message.data)
        elif isinstance(message, Chunks):
            items.extend(message.items)
    return items


def test_outbox_delivers_bursts_in_order_through_a_pipe():
    def produce(out: Outbox) -> None:
        send = out.chunk_writer(5)
        for i in range(20_000):
            send({"i": i})

    assert _sent_through_a_pipe(produce) == [{"i": i} for i in range(20_000)]


def test_outbox_arrays_carry_every_element_in_order_within_their_limit():
    def produce(out: Outbox) -> None:
        send = out.array_writer(5, 100, False)
        for i in range(20_000):
            assert send({"i": i})
        assert not out.array_writer(5, 100, True)(b"raw")  # not an element for a client taking pickles: not sent

    arrays = [json.loads(item) for item in _sent_through_a_pipe(produce)]
    assert [element for array in arrays for element in array] == [{"i": i} for i in range(20_000)]
    assert max(map(len, arrays)) <= 100 and len(arrays) < 20_000


@pytest.mark.parametrize("stream", [True, False])
def test_a_streaming_call_is_told_from_its_frame_without_decoding_it(stream):
    from snakepit import _protocol as protocol

    frame = protocol.call_frame("tool", {"blob": b"x" * 1000, "flag": True}, stream)
    protocol.stamp_call_id(frame, 7)
    assert protocol.is_stream_call(frame) is stream
    for encode in ("json", "pickle"):  # the option's field comes before the flag, the frame's last byte
        frame = protocol.call_frame("tool", {"flag": True}, stream, encode=encode)
        protocol.stamp_call_id(frame, 7)
        assert protocol.is_stream_call(frame) is stream
        call = msgspec.msgpack.decode(frame[4:], type=protocol.ToWorker)
        assert (call.id, call.encode, call.stream, call.args) == (7, encode, stream, {"flag": True})
    other = protocol.encode_frame(protocol.End(1, True))
    assert other[-1] == 0xC3 and protocol.is_stream_call(other) is False  # ends in True, but is no Call
    batch = protocol.encode_frame(protocol.Batch(1, "tool", msgspec.Raw(msgspec.msgpack.encode([True])), "c-1", None))
    assert protocol.is_stream_call(batch) is False

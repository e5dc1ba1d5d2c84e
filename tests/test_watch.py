"""Waiting on a worker through an event loop (``Connection.watch``, shared by every backend):
readers registered with asyncio never outlive their watch, whatever loop or descriptor number
comes next. A reader asyncio keeps for a descriptor closed underneath it hides the next file
given that number: asyncio then only updates its record, and the kernel never hears of it."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest

from snakepit._seam.backend import Closing, watch_readers


@pytest.fixture
def closing():
    signal = Closing()
    yield signal
    signal.close()


def _woken_by(loop: asyncio.AbstractEventLoop, read_fd: int, write_fd: int, closing: Closing) -> bool:
    """Watch ``read_fd`` on ``loop`` (for a new connection), make it readable: woken?"""
    woke: list[bool] = []
    unwatch = watch_readers(
        SimpleNamespace(closing=closing), loop, [(read_fd, False)], lambda flag: (woke.append(flag), loop.stop())
    )
    os.write(write_fd, b"x")
    timer = loop.call_later(2.0, loop.stop)  # a bound, far above a wake-up's microseconds
    loop.run_forever()
    timer.cancel()
    unwatch()
    return woke == [False]


def _reused(old: tuple[int, int]) -> tuple[int, int]:
    for fd in old:
        os.close(fd)
    new = os.pipe()
    if new[0] != old[0]:
        pytest.skip("the descriptor number was not reused")
    return new


def test_a_reader_left_on_another_loop_is_removed_when_its_watch_ends(closing):
    """A worker's connection is watched on one loop, then on another (the soak's asyncio thread,
    then the gRPC server's loop): the first watch, ended late, still removes its own reader."""
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        conn = SimpleNamespace(closing=closing)
        read_fd, write_fd = os.pipe()
        unwatch_first = watch_readers(conn, first, [(read_fd, False)], lambda flag: None)
        unwatch_second = watch_readers(conn, second, [(read_fd, False)], lambda flag: None)
        unwatch_first()  # late: the connection is watched on the second loop by now
        unwatch_second()
        read_fd, write_fd = _reused((read_fd, write_fd))  # the worker is gone; its number serves anew
        assert _woken_by(first, read_fd, write_fd, closing)
        os.close(read_fd)
        os.close(write_fd)
    finally:
        first.close()
        second.close()


def test_a_watch_ended_after_its_descriptor_was_reused_leaves_the_new_one_alone(closing):
    """An exchange's reader is removed late (from a garbage collection, through the loop) after
    its worker's descriptor was closed and its number given to another worker being watched."""
    loop = asyncio.new_event_loop()
    try:
        read_fd, write_fd = os.pipe()
        late = watch_readers(SimpleNamespace(closing=closing), loop, [(read_fd, False)], lambda flag: None)
        read_fd, write_fd = _reused((read_fd, write_fd))  # closed while still watched
        woke: list[bool] = []
        unwatch = watch_readers(
            SimpleNamespace(closing=closing), loop, [(read_fd, False)], lambda flag: (woke.append(flag), loop.stop())
        )
        late()  # must not remove the new watch's reader
        os.write(write_fd, b"x")
        timer = loop.call_later(2.0, loop.stop)
        loop.run_forever()
        timer.cancel()
        unwatch()
        assert woke == [False]
        os.close(read_fd)
        os.close(write_fd)
    finally:
        loop.close()

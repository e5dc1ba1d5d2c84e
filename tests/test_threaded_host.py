"""ThreadHost: cancels raised into a tool thread as asynchronous exceptions, never into our code.

Driven in this process with real threads and the real host; the outbox is a list (the transport
is not what is under test here).
"""

from __future__ import annotations

import threading
import time

from helpers import wait_for

from snakepit import BaseAdapter, tool
from snakepit._hosting.threaded import ThreadHost
from snakepit._protocol import Call, End, Failure, Result


class Spinner(BaseAdapter):
    thread_safe = True

    @tool
    def spin(self, seconds: float = 30.0) -> int:
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            count += 1
        return count

    @tool
    def add(self, a: int, b: int) -> int:
        return a + b


class Collected:
    def __init__(self) -> None:
        self.messages: list = []

    def send(self, message) -> None:
        self.messages.append(message)

    def chunk_writer(self, call_id: int):
        return self.send

    def flush(self) -> None:
        pass


def _call(call_id: int, tool_name: str, args: dict) -> Call:
    return Call(call_id, tool_name, None, None, args, None, None, False)


def _host_thread(host: ThreadHost, calls: list[Call]) -> threading.Thread:
    def run() -> None:
        host.bind_thread()
        for call in calls:
            host.run(call)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_cancel_stops_the_tool_in_its_thread_and_the_next_call_runs_clean():
    out = Collected()
    host = ThreadHost(out)
    host.start("test_threaded_host:Spinner", None)
    thread = _host_thread(host, [_call(1, "spin", {}), _call(2, "add", {"a": 1, "b": 2})])
    wait_for(lambda: host._armed and host._running == 1)
    assert host.cancel([1])
    host.interrupt()
    thread.join(10)
    assert not thread.is_alive()
    assert [type(m) for m in out.messages] == [End, Result], out.messages
    assert out.messages[0].cancelled and out.messages[1].value == 3


def test_a_cancel_taken_back_at_disarm_never_fires_in_our_code():
    """The race the lock exists for: a cancel raised just as the tool returns is taken back
    when the host disarms; the call ends normally and nothing else is hit."""
    for _ in range(50):
        out = Collected()
        host = ThreadHost(out)
        host.start("test_threaded_host:Spinner", None)
        thread = _host_thread(host, [_call(1, "spin", {"seconds": 0.002}), _call(2, "add", {"a": 2, "b": 2})])
        while not host._armed and thread.is_alive():
            pass
        host.cancel([1])
        host.interrupt()
        thread.join(10)
        kinds = [type(m) for m in out.messages]
        assert Failure not in kinds, out.messages
        assert kinds[-1] is Result and out.messages[-1].value == 4


def test_a_cancel_during_a_shield_waits_until_the_frame_is_written():
    out = Collected()
    host = ThreadHost(out)
    host.start("test_threaded_host:Spinner", None)
    entered, leave = threading.Event(), threading.Event()
    outcome: list = []

    def tool_code() -> None:
        host.bind_thread()
        host._running = 7
        host._armed = True
        try:
            with host.shield():
                entered.set()
                leave.wait(5)
                outcome.append("frame written")
            outcome.append("not stopped")
        except BaseException as exc:
            outcome.append(type(exc).__name__)
        finally:
            host._armed = False

    thread = threading.Thread(target=tool_code, daemon=True)
    thread.start()
    entered.wait(5)
    host.cancel([7])
    host.interrupt()  # disarmed inside the shield: nothing is raised now
    leave.set()
    thread.join(5)
    assert outcome == ["frame written", "CallCancelled"]

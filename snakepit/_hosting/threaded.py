"""A :class:`ToolHost` for one of several threads that run calls in one worker (``threads_per_worker``).

A cancel cannot reach such a thread with a signal (Python runs signal handlers on the main
thread only), so it is raised into it as an asynchronous exception
(``PyThreadState_SetAsyncExc``): it fires at the thread's next bytecode, not inside a blocking C
call (``time.sleep`` included), which the owner ends by killing the process after
``cancel_grace``. It is raised only while the tool's own code runs ("armed"), and never lands in
our code: disarming takes the same lock as raising and takes back an exception raised but not
yet fired. A cancel is also recorded, and looked for at the next yield, so none is lost.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

from snakepit._errors import CallCancelled
from snakepit._hosting.host import ToolHost

# Two prototypes of one function: an exception object to raise, or NULL to take one back (a
# ``py_object(None)`` would be Python's None, which the thread would then "raise" as a SystemError).
_raise = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_take_back = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(("PyThreadState_SetAsyncExc", ctypes.pythonapi))


_CANCEL_MEMORY = 60.0  # seconds a cancel is kept for a call that has not started (yet)


def _raise_in(thread: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in ``thread`` at its next bytecode; None takes back one not yet raised."""
    if exception is None:
        _take_back(thread, None)
    else:
        _raise(thread, exception)


class ThreadHost(ToolHost):
    def __init__(self, out: Any) -> None:
        self._cancel_times: dict[int, float] = {}  # call id -> when its cancel came
        self._arming = threading.Lock()  # raising a cancel, and disarming, are one step each
        self._armed_now = False
        self._raised = False  # a cancel was raised into the thread; it may not have fired yet
        super().__init__(out)

    def share_adapter(self, other: ToolHost) -> None:
        """Serve the adapter ``other`` started (one instance per process, shared by its threads)."""
        self._adapter = other._adapter
        self._tools = other._tools

    def bind_thread(self) -> None:
        """Called by the thread that will run this host's calls."""
        self._main = threading.get_ident()

    @property
    def _armed(self) -> bool:
        return self._armed_now

    @_armed.setter
    def _armed(self, value: bool) -> None:
        if value:
            self._armed_now = True
            return
        # A cancel raised while armed may fire on the way in, before the lock is taken: finish
        # disarming all the same, then let it propagate (it is the call's cancel).
        fired: BaseException | None = None
        while True:
            try:
                with self._arming:
                    self._armed_now = False
                    if self._raised:
                        self._raised = False
                        _raise_in(self._main, None)
                break
            except CallCancelled as exc:
                fired = exc
        if fired is not None:
            raise fired

    def run(self, message: Any) -> None:
        try:
            super().run(message)
        finally:
            self._cancel_times.pop(message.id, None)
            try:
                self._armed = False  # whatever happened, no cancel can reach the next call's start
            except CallCancelled:
                pass  # a late cancel of the call just ended: nothing left to stop

    def cancel(self, ids: list[int]) -> bool:
        now = time.monotonic()
        for call_id in ids:
            self._cancel_times[call_id] = now
        return super().cancel(ids)

    def _forget_before(self, call_id: int) -> None:
        """Calls reach a process's threads in any order (two threads' calls are sent side by
        side), so a cancel of an older id may still be for a call not started: forget cancels by
        age instead, once no call can be waiting for them."""
        horizon = time.monotonic() - _CANCEL_MEMORY
        for stale, when in list(self._cancel_times.items()):
            if when < horizon:
                self._cancel_times.pop(stale, None)
                self._cancelled.discard(stale)

    def interrupt(self) -> None:
        """From the control thread: stop the running tool if its call is cancelled."""
        with self._arming:
            if self._armed_now and self._running in self._cancelled:
                self._raised = True
                _raise_in(self._main, CallCancelled)

    def shield(self) -> _ThreadShield:  # type: ignore[override]
        return _ThreadShield(self)


class _ThreadShield:
    """Held while a frame is written from inside tool code (a log record): disarmed meanwhile, so
    no cancel lands half-way through the frame; a cancel that came is raised on the way out."""

    __slots__ = ("_host", "_was_armed")

    def __init__(self, host: ThreadHost) -> None:
        self._host = host
        self._was_armed = False

    def __enter__(self) -> None:
        host = self._host
        if threading.get_ident() == host._main and host._armed:
            self._was_armed = True
            host._armed = False

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if not self._was_armed:
            return
        host = self._host
        host._armed = True
        if kind is None and host._running in host._cancelled:
            host._stop()

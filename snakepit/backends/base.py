"""The seam between the pool and what runs its workers.

The generic pool (dispatcher, exchange, map engine, asyncio drivers) speaks to a worker only
through a :class:`Connection`; a connection raises :class:`WorkerGone` and
:class:`DeadlineExceeded`, which the pool's call logic turns into the caller's errors
(``worker_crashed``, ``timeout``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol, Sequence


class WorkerGone(Exception):
    """The worker ended (its process exited, or it closed its end of the connection)."""


class DeadlineExceeded(Exception):
    """A wait on the worker reached the call's deadline first."""


class Connection(Protocol):
    """The pool's line to one worker, as the generic pool uses it (calls, streams, maps).

    One party uses it at a time: the caller that checked the worker out, or the supervisor.
    Messages are the wire messages of :mod:`snakepit.protocol` (``Result``, ``Chunk``, ...).
    """

    pid: int | None  # the worker's process id, where it has one (for stats and events)
    exit_info: dict[str, Any] | None  # how it ended, once known: exit_code, signal

    @property
    def broken(self) -> bool:
        """Bytes may have been lost reading it (an exception escaped a read): what it says next
        cannot be trusted, so the worker must be replaced."""

    def fits(self, size: int) -> bool:
        """A call of ``size`` bytes is taken at once, without waiting for the worker to read."""

    def send(self, frame: bytes | bytearray, deadline: float | None = None) -> None:
        """Send an encoded call or batch; ``WorkerGone``, or ``DeadlineExceeded`` when the
        worker takes none of it before ``deadline``."""

    def send_control(self, message: Any) -> bool:
        """Send ``Cancel``/``Ping`` past any queued call; False if the worker has gone."""

    def take(self, exited: bool = False) -> list[Any]:
        """The messages that have arrived, maybe none, without waiting; ``WorkerGone`` once the
        worker has ended (``exited``: it is known to have) and nothing more will come."""

    def receive(self, deadline: float | None) -> list[Any]:
        """Block until messages arrive: ``WorkerGone`` or ``DeadlineExceeded``."""

    def watch(self, loop: asyncio.AbstractEventLoop, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``callback(exited)`` on ``loop`` whenever there is something to take, or the
        worker has ended; returns the function that stops it (called on the loop)."""

    def exit_status(self) -> dict[str, Any]:
        """After ``WorkerGone``: wait until the worker has ended (ending it if it lingers) and
        say how (``exit_info``). Idempotent."""

    def salvage(self) -> list[Any]:
        """After :meth:`exit_status`: messages the worker had produced but not delivered."""

    def kill(self) -> None:
        """End the worker now, and whatever it started."""

    @classmethod
    def wait_any(cls, conns: Sequence[Connection], deadline: float | None) -> list[tuple[Connection, bool]]:
        """Block until some of ``conns`` (all of this kind) have something to take or have
        ended, or ``deadline`` passes: those connections, each with whether it has ended."""

"""The seam between the pool and what runs its workers.

The generic pool (dispatcher, exchange, map engine, asyncio drivers) speaks to a worker only
through a :class:`Connection`; a connection raises :class:`WorkerGone`,
:class:`DeadlineExceeded` and :class:`PoolClosing`, which the pool's call logic turns into the
caller's errors (``worker_crashed``, ``timeout``, ``pool_closed``). The supervisor starts,
watches and stops workers through a :class:`Backend`, which reports back through
:class:`WorkerEvents`.
"""

from __future__ import annotations

import importlib
import os
import select
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only
    import asyncio

    from snakepit._seam.launch import BackendOptions
    from snakepit._seam.reactor import Reactor
    from snakepit._seam.workers import Worker


DEATH_CAUSES = ("segfault", "abort", "oom", "killed", "exit")


def death_cause(exit_code: int | None, signal_name: str | None, oom: bool = False) -> str:
    """Why a worker died, for ``details["cause"]`` and the death counts: ``segfault``
    (SIGSEGV), ``abort`` (SIGABRT), ``oom`` (killed by the kernel's OOM killer, when that can be
    told), ``killed`` (another signal, or an end nothing says more about), ``exit`` (it exited)."""
    if oom:
        return "oom"
    if signal_name == "SIGSEGV":
        return "segfault"
    if signal_name == "SIGABRT":
        return "abort"
    if signal_name is not None or exit_code is None:
        return "killed"
    return "exit"


class WorkerGone(Exception):
    """The worker ended (its process exited, or it closed its end of the connection)."""


class DeadlineExceeded(Exception):
    """A wait on the worker reached the call's deadline first."""


class PoolClosing(Exception):
    """A wait on the worker was interrupted: the pool began closing (see :class:`Closing`)."""


class Closing:
    """Set once, when the pool begins to close: every caller waiting on a worker of its backend
    wakes at once and gets ``pool_closed`` (:class:`PoolClosing` from the wait), whatever its
    worker is doing -- a tool stuck in C, an actor that cannot be interrupted -- while the
    workers' own shutdown (cancel, ``cleanup()``, exit) goes on within ``shutdown_timeout``.

    Blocking waits poll :attr:`fd`, an eventfd readable from then on; event loops subscribe
    (several waits on one loop cannot all add a reader of one descriptor). The owner of the
    pool makes it, sets it and closes it; backends hand it to every connection.
    """

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.is_set = False
        self._lock = threading.Lock()
        self._waiters: dict[object, tuple[asyncio.AbstractEventLoop, Callable[[bool], None]]] = {}

    def set(self) -> None:
        with self._lock:
            if self.is_set:
                return
            self.is_set = True
            waiters, self._waiters = list(self._waiters.values()), {}
        os.eventfd_write(self.fd, 1)
        for loop, callback in waiters:
            try:
                loop.call_soon_threadsafe(callback, False)
            except RuntimeError:  # that loop is closed: nobody waits on it
                pass

    def subscribe(self, loop: asyncio.AbstractEventLoop, callback: Callable[[bool], None]) -> Callable[[], None]:
        """``callback(False)`` on ``loop`` once set (at once if it is); returns the unsubscribe."""
        key = object()
        with self._lock:
            if not self.is_set:
                self._waiters[key] = (loop, callback)
                return lambda: self._forget(key)
        loop.call_soon(callback, False)
        return _nothing

    def _forget(self, key: object) -> None:
        with self._lock:
            self._waiters.pop(key, None)

    def close(self) -> None:
        """After the shutdown: waits still to come see :attr:`is_set` before they poll."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _nothing() -> None:
    pass


class Connection(Protocol):
    """The pool's line to one worker, as the generic pool uses it (calls, streams, maps).

    One party uses it at a time: the caller that checked the worker out, or the supervisor.
    Messages are the wire messages of :mod:`snakepit._protocol` (``Result``, ``Chunk``, ...).
    """

    pid: int | None  # the worker's process id, where it has one (for stats and events)
    closing: Closing  # the pool's: set, it interrupts every wait below with PoolClosing
    node: str | None  # the machine it runs on, when not this one (Ray: the node's address)
    node_id: str | None  # Ray's id of the node it runs on (nodes may share an address), else None
    exit_info: dict[str, Any] | None  # how it ended, once known: exit_code, signal

    @property
    def broken(self) -> bool:
        """Bytes may have been lost reading it (an exception escaped a read): what it says next
        cannot be trusted, so the worker must be replaced."""
        ...

    @property
    def ready_fd(self) -> int:
        """A file descriptor readable whenever :meth:`take` has something, or the worker has
        ended: what the supervisor's selector watches while a cancelled call drains."""
        ...

    def memory(self) -> int | None:
        """The worker's resident memory in bytes, where it can be measured from here."""
        ...

    def spin(self) -> bool:
        """Wait awake, briefly and adaptively, for something to take: True if it came. Lets an
        event loop pick up a quick reply without the round trip through its selector."""
        ...

    def fits(self, size: int) -> bool:
        """A call of ``size`` bytes is taken at once, without waiting for the worker to read."""
        ...

    def send(self, frame: bytes | bytearray, deadline: float | None = None, attachments: Any = None) -> None:
        """Send an encoded call or batch (and its ``attachments``, see ``Backend.attachments``);
        ``WorkerGone``, or ``DeadlineExceeded`` when the worker takes none of it before
        ``deadline``."""
        ...

    def send_control(self, message: Any) -> bool:
        """Send ``Cancel``/``Ping`` past any queued call; False if the worker has gone."""
        ...

    def take(self, exited: bool = False) -> list[Any]:
        """The messages that have arrived, maybe none, without waiting; ``WorkerGone`` once the
        worker has ended (``exited``: it is known to have) and nothing more will come."""
        ...

    def receive(self, deadline: float | None) -> list[Any]:
        """Block until messages arrive: ``WorkerGone``, ``DeadlineExceeded``, or
        ``PoolClosing`` when :attr:`closing` is set and nothing has arrived."""
        ...

    def watch(self, loop: asyncio.AbstractEventLoop, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``callback(exited)`` on ``loop`` whenever there is something to take, or the
        worker has ended, or :attr:`closing` is set (``exited`` False: the caller then finds
        nothing to take); returns the function that stops it (called on the loop)."""
        ...

    def exit_status(self) -> dict[str, Any]:
        """After ``WorkerGone``: wait until the worker has ended (ending it if it lingers) and
        say how (``exit_info``). Idempotent."""
        ...

    def salvage(self) -> list[Any]:
        """After :meth:`exit_status`: messages the worker had produced but not delivered."""
        ...

    def kill(self) -> None:
        """End the worker now, and whatever it started."""
        ...

    @classmethod
    def wait_any(cls, conns: Sequence[Connection], deadline: float | None) -> list[tuple[Connection, bool]]:
        """Block until some of ``conns`` (all of this kind) have something to take or have
        ended, or ``deadline`` passes, or their :attr:`closing` is set: those connections, each
        with whether it has ended."""
        ...


class WorkerEvents(Protocol):
    """What a backend reports to the supervisor, always on the supervisor's thread."""

    def ready(self, worker: Worker, tools: list[Any], /) -> None:
        """The worker initialised its adapter and takes calls; ``tools``: its tool specs."""
        ...

    def exited(self, worker: Worker, /) -> None:
        """The worker has ended (whatever ended it). A worker that failed to start sets
        ``worker.start_error`` first."""
        ...

    def pong(self, worker: Worker, seq: int, /) -> None:
        """The worker answered heartbeat ``seq``."""
        ...

    def telemetry(self, worker: Worker, fields: dict[str, Any], /) -> None:
        """The worker's tool sent a telemetry event (see :mod:`snakepit.telemetry`)."""
        ...


class Backend(Protocol):
    """Launches, watches, stops and describes workers: the mechanisms. When to do what (start
    gating, back-off, drain grace, heartbeats, recycling) is the supervisor's policy."""

    name: str
    # Makes the holder of one call's large arguments in shared memory (``share``, ``fds``,
    # ``close``), passed to ``Connection.send`` as ``attachments``; None where connections
    # cannot carry memory (values then travel in the frame).
    attachments: Callable[[], Any] | None
    # Its workers encode the values of a call made with ``encode=`` (see snakepit._encoding);
    # False: the frame does not ask them to, and the owner encodes each value it receives.
    encodes: bool

    def start(self, reactor: Reactor, events: WorkerEvents, closing: Closing) -> None:
        """Before the first launch: ``reactor`` is the supervisor's thread, where ``events``
        must be reported (``reactor.submit`` from other threads); ``closing`` goes to every
        connection."""
        ...

    def launch(self, worker: Worker) -> None:
        """Start ``worker`` (setting ``worker.conn``); raises if nothing could be started."""
        ...

    def slot_connections(self, worker: Worker) -> list[Any] | None:
        """For a ready worker that runs several calls at once: a connection per call slot
        (see ``threads_per_worker``); None for one that runs one call at a time."""
        ...

    def ask_to_stop(self, worker: Worker) -> None:
        """Ask the worker to stop once idle, running its adapter's ``cleanup()``."""
        ...

    def terminate(self, worker: Worker) -> None:
        """Ask the worker to stop now (it may ignore it; ``worker.conn.kill()`` may not)."""
        ...

    def ended(self, worker: Worker) -> dict[str, Any]:
        """The worker was seen ending: make sure it is gone, and say how (exit information)."""
        ...

    def dispose(self, worker: Worker) -> None:
        """Release what the backend holds for a dead worker nobody uses any more."""
        ...

    def finish(self, leftovers: Iterable[Worker], deadline: float | None, kill_grace: float) -> None:
        """At shutdown, after supervision ended: stop the workers still running, by
        ``deadline`` gracefully, then by force within ``kill_grace``."""
        ...

    def close(self) -> None:
        """After every worker is gone."""
        ...


class FedByThread:
    """For a connection a reader thread feeds: it wakes callers through ``ready_fd`` whenever
    :meth:`take` may have something. Blocking, asyncio and many-connection waits on that fd."""

    @property
    def ready_fd(self) -> int:
        raise NotImplementedError

    closing: Closing

    def take(self, exited: bool = False) -> list[Any]:
        raise NotImplementedError

    def receive(self, deadline: float | None) -> list[Any]:
        from snakepit._seam.timing import poll_ms  # the owner's: a worker never waits here

        if self.closing.is_set:  # first: a closed pool's workers' descriptors may be closed too
            raise PoolClosing()
        poller = select.poll()
        poller.register(self.ready_fd, select.POLLIN)
        poller.register(self.closing.fd, select.POLLIN)
        while True:
            messages = self.take()
            if messages:
                return messages
            if self.closing.is_set:
                raise PoolClosing()
            wait_ms = poll_ms(deadline)
            if wait_ms == 0:
                raise DeadlineExceeded()
            poller.poll(wait_ms)

    def watch(self, loop: asyncio.AbstractEventLoop, callback: Callable[[bool], None]) -> Callable[[], None]:
        return watch_readers(self, loop, [(self.ready_fd, False)], callback)

    @classmethod
    def wait_any(cls, conns: Sequence[Any], deadline: float | None) -> list[tuple[Any, bool]]:
        from snakepit._seam.timing import poll_ms

        if conns and conns[0].closing.is_set:  # one for the whole pool
            return []
        poller = select.poll()
        by_fd = {conn.ready_fd: conn for conn in conns}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        if conns:
            poller.register(conns[0].closing.fd, select.POLLIN)
        return [(by_fd[fd], False) for fd, _ in poller.poll(poll_ms(deadline)) if fd in by_fd]


# Which watch registered each descriptor's reader with each event loop (see watch_readers).
_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, object]] = weakref.WeakKeyDictionary()


def watch_readers(
    conn: Any, loop: asyncio.AbstractEventLoop, readers: Sequence[tuple[int, bool]], callback: Callable[[bool], None]
) -> Callable[[], None]:
    """``Connection.watch`` for connections with file descriptors: ``callback(flag)`` on ``loop``
    when one of ``readers``' descriptors is readable, or the pool begins closing.

    A watch may end late -- an exchange's reader removed from a garbage collection, through the
    loop -- when its worker is watched by another exchange, on this loop or another, or is gone,
    its descriptors closed and their numbers given to a new worker's. So a reader belongs to the
    watch that registered it *on that loop*, and only that watch's end removes it. And a reader
    asyncio still keeps for a number is removed before registering anew: asyncio would only
    update its record of a descriptor closed underneath it (the kernel dropped it), and the new
    file with that number would never wake the loop."""
    token = object()
    owners = _readers.setdefault(loop, {})
    for fd, flag in readers:
        loop.remove_reader(fd)
        loop.add_reader(fd, callback, flag)
        owners[fd] = token
    unsubscribe = conn.closing.subscribe(loop, callback)

    def unwatch() -> None:
        unsubscribe()
        for fd, _ in readers:
            if owners.get(fd) is token:
                del owners[fd]
                loop.remove_reader(fd)

    return unwatch


# The backends by name, and the module whose ``create(adapter, adapter_args, worker_env, **options)``
# makes one: imported when a pool asks for it, so the pool and the backends never import each other.
BACKENDS = {"process": "snakepit._backends.process.backend", "ray": "snakepit._backends.ray.backend"}


def create_backend(name: Any, adapter: Any, adapter_args: Any, worker_env: Any, options: BackendOptions) -> Backend:
    """The backend called ``name``, set up to run ``adapter``; ``invalid_config`` if there is
    none, or if an option does not apply to it (each backend checks its own)."""
    from snakepit import _errors as errors

    module = BACKENDS.get(name) if isinstance(name, str) else None
    if module is None:
        raise errors.validation(
            errors.Reason.INVALID_CONFIG, f"unknown backend {name!r}: choose one of {', '.join(map(repr, BACKENDS))}"
        )
    backend: Backend = importlib.import_module(module).create(adapter, adapter_args, worker_env, options)
    return backend

"""Checkout and check-in: the thread-safe shell around the pure router.

One lock guards the router, the table of live workers and the ``closed`` flag. A call takes a
``Ticket``; if the router cannot serve it at once, the caller parks on the ticket's waker (a lock
for threads, a future for asyncio) until a check-in hands it a worker, the router refuses it, or
its deadline passes. Wake-ups happen outside the lock.

Ownership of a worker's responses pipe moves with the worker: the caller owns it between
``checkout`` and ``release``/``abandon``/``lost``; the supervisor owns it otherwise.

A draining close (:meth:`Dispatcher.drain`) refuses new calls but goes on serving the queue: the
calls already waiting still get workers, those running finish. Every step that lets a call go
(a worker given back, a ticket leaving the queue) checks, under the lock, whether any call is
left (:meth:`Dispatcher._settled`), and sets the drain's event when none is: the closing thread
waits on it, never polls.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from snakepit import _errors as errors
from snakepit._errors import Reason
from snakepit._observe import Observer
from snakepit._pool.recycling import RecyclePolicy, served
from snakepit._pool.router import Router, Ticket
from snakepit._pool.sessions import SessionState, SessionStore
from snakepit._pool.stats import WorkerInfo
from snakepit._seam.affinity import Affinity
from snakepit._seam.session import SessionInfo
from snakepit._seam.timing import earliest, lock_seconds, seconds
from snakepit._seam.workers import Worker, WorkerState, move

_REFUSALS = {
    Reason.WORKER_BUSY: "the session's worker is busy (strict_fail_fast)",
    Reason.SESSION_WORKER_UNAVAILABLE: "the session's worker is gone (died or recycled); the session will re-pin",
    Reason.POOL_CLOSED: "the pool is not running (not started, or closed)",
}


class Counters:
    """Monotonic counters, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock: threading.Lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def bump(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Owner(Protocol):
    """Whoever a checked-out worker belongs to (a call's exchange, a map): it adopts the worker
    under the dispatcher's lock, at the moment the worker is assigned, and gives it back when
    it is done -- or, if it is dropped unfinished, when it is collected. No step between the
    assignment and the call's first message can lose the worker."""

    def adopt(self, handle: Worker, lease: int) -> None:
        """The worker is yours under ``lease``: pass it back to release and abandon."""
        ...

    def disown(self, handle: Worker) -> bool:
        """The worker is handed back before use (the wait was interrupted); False if the owner
        has started using it (it then gives it back itself)."""
        ...


class Supervision(Protocol):
    """What the dispatcher hands to the supervisor's thread (see :mod:`.supervisor`): work that
    must not run under the dispatcher's lock, or on a caller's thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None: ...

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Any: ...

    def defer(self, fn: Callable[..., Any], *args: Any) -> None: ...

    def dispose(self, handle: Worker) -> None: ...

    def retire(self, handle: Worker) -> None: ...

    def scrap(self, handle: Worker) -> None: ...

    def drain(self, handle: Worker, call_id: int) -> None: ...

    def lost(self, handle: Worker) -> None: ...


class _Refused(Exception):
    """A refusal decided under the lock, raised to the caller once the lock is released, with
    its event emitted then: an ``on_event`` callback or a log handler may call into the pool."""

    def __init__(self, error: errors.SnakepitError, event: tuple[str, str, dict[str, Any]] | None = None) -> None:
        self.error: errors.SnakepitError = error
        self.event: tuple[str, str, dict[str, Any]] | None = event

    def surface(self, observer: Observer, owner: Any = None) -> errors.SnakepitError:
        """The refusal's error, its event emitted; both name the call's correlation id."""
        correlation_id = getattr(owner, "correlation_id", None)
        if correlation_id is not None:
            self.error.details.setdefault("correlation_id", correlation_id)
        if self.event is not None:
            name, message, fields = self.event
            if correlation_id is not None:
                fields = {**fields, "correlation_id": correlation_id}
            # The caller gets the error too: the log says it at INFO (WARNING is for what no caller sees).
            observer.emit(name, logging.INFO, message, **fields)
        return self.error


class Dispatcher:
    def __init__(
        self,
        max_queue: int,
        counters: Counters,
        sessions: SessionStore,
        affinity: Affinity,
        recycle: RecyclePolicy,
        observer: Observer,
        queue_timeout: float | None = None,
        spread: bool = False,
    ) -> None:
        self.lock: threading.Lock = threading.Lock()
        self.queue_timeout: float | None = queue_timeout  # the pool's: named in queue_timeout errors
        self.observer: Observer = observer
        self.recycle: RecyclePolicy = recycle
        self._recycling = recycle.active  # checked at every release
        self.router: Router = Router(max_queue, spread=spread)  # spread: processes of several call slots
        self.sessions: SessionStore = sessions
        sessions.in_use = _serving
        sessions.on_pinned = self.router.pin
        self.affinity: Affinity = affinity  # the pool's default mode
        self.workers: dict[int, Worker] = {}
        self.closed: bool = True  # until start()
        self.draining: bool = False  # a draining close: new calls are refused, the queue is served
        self._quiet: threading.Event | None = None  # the drain's: set once no call is left (or at close)
        self._dead_held: list[Worker] = []  # workers that died in a caller's hands, until given back (for a drain)
        self.counters: Counters = counters
        self.supervisor: Supervision | None = None
        self.start_failure: errors.SnakepitError | None = None  # why no worker could start
        self._sweep_armed: bool = False
        # Call ids are drawn when a call is sent to its worker, so each worker sees them grow.
        self.call_ids: itertools.count[int] = itertools.count(1)

    # -- callers ---------------------------------------------------------------------------------

    def checkout(
        self,
        session_id: str | None,
        affinity: Affinity | None,
        queue_deadline: float | None,
        call_deadline: float | None,
        owner: Owner | None = None,
    ) -> Worker:
        """A worker for this call, waiting FIFO if none may serve it now; raises refusals.

        ``owner`` adopts the worker the moment it is assigned (under the lock), so that an
        interruption between two steps of the caller cannot lose it (see :class:`Owner`).
        Whatever interrupts the wait (Ctrl-C, any exception) withdraws the ticket, or hands back
        the worker it was given meanwhile.
        """
        handle, ticket, parked = self.request(session_id, affinity, _park, owner)
        if handle is not None:
            return handle
        assert ticket is not None
        deadline = earliest(queue_deadline, call_deadline)
        try:
            while handle is None:
                parked.acquire(timeout=lock_seconds(deadline))
                handle, parked = self.settle(ticket, queue_deadline, call_deadline, _park)
        except errors.SnakepitError:
            raise  # the ticket was refused or timed out: it is no longer anywhere
        except BaseException:
            self.forsake(ticket)
            raise
        return handle

    def request(
        self, session_id: str | None, affinity: Affinity | None, park: Callable[[Ticket], Any], owner: Owner | None = None
    ) -> tuple[Worker | None, Ticket | None, Any]:
        """First step of a checkout: ``(worker, ticket, None)`` if one is free now, else
        ``(None, ticket, park(ticket))`` -- the ticket waits and ``park`` installed its waker.
        A call with no session given the longest-idle worker needs no ticket: ``(worker, None,
        None)``.

        The waiting itself is the caller's (a thread blocks on a lock, a coroutine awaits a
        future); :meth:`settle` ends each wait. This is the only difference between the two.
        """
        ticket: Ticket | None = None
        try:
            with self.lock:
                if self.closed or self.draining:
                    raise errors.pool_closed(self.draining and not self.closed)
                if session_id is None:  # the common case first: any idle worker serves it
                    handle = self._take_idle(owner)
                    if handle is not None:
                        return handle, None, None
                if self.start_failure is not None and not self.workers:
                    raise self._refusal(Reason.WORKER_START_FAILED)
                ticket = self._ticket(session_id, affinity)
                ticket.owner = owner
                handle = self._acquire(ticket)
                if handle is not None:
                    return handle, ticket, None
                self.counters.bump("queued")
                return None, ticket, park(ticket)
        except _Refused as refused:
            raise refused.surface(self.observer, owner) from None
        except errors.SnakepitError:
            raise
        except BaseException:  # interrupted mid-way: leave no ticket behind
            if ticket is not None:
                self.forsake(ticket)
            raise

    def settle(
        self, ticket: Ticket, queue_deadline: float | None, call_deadline: float | None, park: Callable[[Ticket], Any]
    ) -> tuple[Worker | None, Any]:
        """After a wait ended (woken, or at the deadline): the worker, or the refusal or timeout
        raised, or ``(None, park(ticket))`` to wait again."""
        stale: list[Worker] = []
        try:
            with self.lock:
                try:
                    if not ticket.done and self.router.withdraw(ticket):
                        raise self._deadline_error(queue_deadline, call_deadline, ticket.owner)
                    handle = self._claim(ticket, stale)
                    if handle is None:  # the worker it was handed died before it was taken: ask again
                        ticket.worker = None
                        handle = self._acquire(ticket)
                    return (handle, None) if handle is not None else (None, park(ticket))
                finally:
                    self._settled()
        except _Refused as refused:
            raise refused.surface(self.observer, ticket.owner) from None
        finally:
            self._dispose(stale)

    def checkout_now(self, owner: Owner | None = None) -> Worker | None:
        """An idle worker if there is one (no session, no queueing); ``None`` otherwise."""
        with self.lock:
            return None if self.closed or self.draining else self._take_idle(owner)

    def _take_idle(self, owner: Owner | None) -> Worker | None:
        worker = self.router.take_idle()
        if worker is None:
            return None
        handle = self.workers[worker]  # router and table change together under this lock
        self._assign(handle, owner)
        return handle

    def forsake(self, ticket: Ticket) -> None:
        """The caller stopped waiting (its task was cancelled, it was interrupted): leave the
        queue, or hand back the worker the ticket was given in the meantime."""
        stale: list[Worker] = []
        woken: list[Ticket] = []
        with self.lock:
            try:
                if self.router.withdraw(ticket) or not ticket.done or ticket.refused is not None:
                    return
                handle = self.workers.get(ticket.worker)  # type: ignore[arg-type]
                if handle is None:
                    self._unassign(ticket, stale)
                else:
                    woken = self._hand_back(ticket, handle)
            finally:
                self._settled()
        self._dispose(stale)
        for other in woken:
            _wake(other)

    def _hand_back(self, ticket: Ticket, handle: Worker) -> list[Ticket]:
        """:meth:`forsake` of a ticket given ``handle`` (lock held): back to the pool, unless its
        owner already uses it (then it comes back through the owner) or it is someone else's."""
        ours = ticket.owner is not None and handle.owner is not None and handle.owner() is ticket.owner
        if handle.checked_out and not ours:
            return []  # given back already, and someone else's now
        if ours and ticket.owner is not None and not ticket.owner.disown(handle):
            return []  # its owner is using it already: it comes back through the owner
        # Ours, or assigned by the router but never claimed (interrupted): back to the pool.
        handle.checked_out = False
        handle.owner = None
        return self._free(handle)

    def mode_of(self, session_id: str, affinity: Affinity | None) -> Affinity:
        """The affinity mode a call of ``session_id`` runs under."""
        with self.lock:
            return self._mode(self.sessions.get(session_id), affinity)

    def _mode(self, session: Any, affinity: Affinity | None) -> Affinity:
        """A call's own mode, else its session's, else the pool's."""
        return affinity or (session.affinity if session is not None else None) or self.affinity

    def _ticket(self, session_id: str | None, affinity: Affinity | None) -> Ticket:
        """The routing request for a call (lock held): its mode and its session's pin."""
        if session_id is None:
            return Ticket()
        session = self.sessions.open(session_id, time.monotonic())
        self._arm_sweep()
        return Ticket(affinity=self._mode(session, affinity), pinned=session.worker, session_id=session_id)

    def _acquire(self, ticket: Ticket) -> Worker | None:
        """Serve ``ticket`` now, raise its refusal, or park it (``None``); lock held."""
        self.router.acquire(ticket)
        # Router and worker table change together under this lock, so a worker served here exists.
        return self._claim(ticket) if ticket.done else None

    def _claim(self, ticket: Ticket, stale: list[Worker] | None = None) -> Worker | None:
        """The worker a served ticket got (lock held), or the refusal as an error; None if the
        worker it was handed has died since (given back, into ``stale``: see :meth:`_unassign`).

        Pins the ticket's session to that worker; a refusal for a vanished worker drops the pin.
        """
        session = self.sessions.get(ticket.session_id) if ticket.session_id is not None else None
        if ticket.refused is not None:
            if ticket.refused == Reason.POOL_SATURATED:
                self.counters.bump("pool_saturated")
                waiting, limit = self.router.waiting, self.router.max_queue
                message = f"pool saturated: {waiting} calls waiting (max_queue={limit})"
                error = errors.pool_error(Reason.POOL_SATURATED, message, max_queue=limit)
                raise _Refused(error, ("pool_saturated", message, {"waiting": waiting, "max_queue": limit}))
            if ticket.refused == Reason.SESSION_WORKER_UNAVAILABLE and session is not None:
                self.sessions.unpin(session)
            raise _Refused(self._refusal(ticket.refused))
        handle = self.workers.get(ticket.worker)  # type: ignore[arg-type]
        if handle is None:
            if stale is not None:
                self._unassign(ticket, stale)
            return None
        self._assign(handle, ticket.owner)
        if session is not None:
            self.sessions.pin(session, handle.group)  # its process: any of its call slots serves the session
            session.calls += 1
            session.serving = handle
            handle.session_id = session.id
        return handle

    # -- sessions --------------------------------------------------------------------------------

    def open_session(self, session_id: str, affinity: Affinity | None, metadata: dict[str, str] | None = None) -> None:
        with self.lock:
            self.sessions.open(session_id, time.monotonic(), affinity, metadata)
            self._arm_sweep()

    def close_session(self, session_id: str) -> bool:
        with self.lock:
            return self.sessions.close(session_id)

    def touch_session(self, session_id: str) -> SessionInfo | None:
        """Keep a session alive (its TTL starts again); the session, or None if there is none."""
        with self.lock:
            self.sessions.sweep(time.monotonic())
            if session_id not in self.sessions:
                return None
            session = self.sessions.open(session_id, time.monotonic())
            return SessionInfo(session.id, session.worker, session.created_at, dict(session.metadata))

    def session_worker(self, session_id: str) -> int | None:
        with self.lock:
            session = self.sessions.get(session_id)
            return None if session is None else session.worker

    def _arm_sweep(self) -> None:
        """One timer for the next session expiry (lock held); it re-arms itself while needed."""
        if self._sweep_armed or self.supervisor is None:
            return
        expiry = self.sessions.next_expiry()
        if expiry is not None:
            self._sweep_armed = True
            self.supervisor.call_later(max(0.0, expiry - time.monotonic()), self._sweep)

    def _sweep(self) -> None:
        with self.lock:
            self._sweep_armed = False
            self.sessions.sweep(time.monotonic())
            self._arm_sweep()

    def _refusal(self, reason: str) -> errors.SnakepitError:
        if reason == Reason.POOL_CLOSED:
            return errors.pool_closed()
        if reason == Reason.WORKER_START_FAILED and self.start_failure is not None:
            return errors.build_error(**self.start_failure.to_dict())
        return errors.pool_error(reason, _REFUSALS[reason])

    @staticmethod
    def _unassign(ticket: Ticket, stale: list[Worker]) -> None:
        """A released worker is assigned to the oldest waiter allowed to use it, and checked out
        to it, before the waiter wakes to take it (:meth:`_free`). If it dies in between, the
        waiter asks again -- and the dead worker, still checked out to nobody who will ever give
        it back, would keep its process's connection from being disposed of (lock held): it is
        given back here, into ``stale``, which the caller disposes of once the lock is released."""
        assigned, ticket.assigned = ticket.assigned, None
        if assigned is None:
            return
        handle, lease = assigned
        if handle.lease != lease or not handle.checked_out:
            return
        if ticket.owner is not None and not ticket.owner.disown(handle):
            return  # its owner uses it already: it comes back through the owner
        handle.checked_out = False
        handle.owner = None
        stale.append(handle)

    def _dispose(self, stale: list[Worker]) -> None:
        """Dispose of dead workers nobody holds any more (not under the lock)."""
        if stale:
            supervisor = self._supervise()
            for handle in stale:
                supervisor.submit(supervisor.dispose, handle)

    def _deadline_error(self, queue_deadline: float | None, call_deadline: float | None, owner: Owner | None) -> _Refused:
        """The error and event of a ticket that waited past its deadline: the call's own
        ``timeout`` if that came first, else ``queue_timeout``; each names its limit."""
        tool = getattr(owner, "tool", None)
        call = "a call" if tool is None else f"call to {tool!r}"
        if call_deadline is not None and (queue_deadline is None or call_deadline <= queue_deadline):
            self.counters.bump("timeouts")
            limit = getattr(owner, "timeout", None)  # the call's own, which its exchange knows
            of = "" if limit is None else f" of {seconds(limit)}"
            message = f"{call} exceeded its timeout{of} while waiting for a worker"
            fields = {"stage": "queued"} if limit is None else {"stage": "queued", "timeout": limit}
            event = ("timeout", message, {"waiting": True, **fields})
            return _Refused(errors.timeout(Reason.TIMEOUT, message, **fields), event)
        self.counters.bump("queue_timeouts")
        limit = self.queue_timeout
        if limit is None:  # a dispatcher told no limit (a test's): only the deadline
            message = f"{call} found no worker within its queue_timeout"
            fields = {"stage": "queued"}
        else:
            message = f"{call} waited {seconds(limit)} for a worker (queue_timeout)"
            fields = {"stage": "queued", "queue_timeout": limit}
        return _Refused(errors.timeout(Reason.QUEUE_TIMEOUT, message, **fields), ("queue_timeout", message, fields))

    def release(self, handle: Worker, lease: int | None = None) -> None:
        """The caller is done with its worker: back to the pool, recycled if due, or disposed of
        if it died under the call. Ignored under a stale ``lease`` (the worker has moved on)."""
        if lease is not None and lease != handle.lease:
            return
        if handle.conn.broken and handle.state is not WorkerState.DEAD:  # its pipe cannot be read on
            self.abandon(handle, -1)
            return
        process = handle.process or handle
        reason = self.recycle.reason(process) if self._recycling and handle.state is not WorkerState.DEAD else None
        retiring = None
        with self.lock:
            handle.checked_out = False
            handle.owner = None
            handle.outstanding.clear()
            handle.current_tool = None
            dead = handle.state is WorkerState.DEAD
            if dead:
                woken: list[Ticket] = []
            elif reason is not None:
                woken, retiring = self._retire(handle, reason)
            else:
                woken = self._free(handle)
            self._settled()
        if dead:
            supervisor = self._supervise()
            supervisor.submit(supervisor.dispose, handle)
        elif retiring is not None:
            supervisor = self._supervise()
            supervisor.submit(supervisor.retire, retiring)
        for ticket in woken:
            _wake(ticket)

    def cancel_later(self, exchange: Any) -> None:
        """Cancel an exchange from a garbage collection (``__del__``), which may run on a thread
        that holds this very lock: the supervisor thread does it, with nothing taken here."""
        self.defer(exchange.cancel)

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the supervisor's thread; takes no lock (see :meth:`cancel_later`)."""
        self._supervise().defer(fn, *args)

    def give_up(self, handle: Worker, lease: int | None = None) -> None:
        """The caller stops waiting on its worker as the pool closes (``pool_closed``): the
        worker is no longer its, and not free either -- the shutdown has told it to cancel what it
        runs and to stop. If the shutdown has already passed it by, it is disposed of now."""
        with self.lock:
            if lease is not None and lease != handle.lease:
                return
            handle.checked_out = False
            handle.owner = None
            dead = handle.state is WorkerState.DEAD
            self._settled()
        self._dispose([handle] if dead else [])

    def abandon(self, handle: Worker, call_id: int, lease: int | None = None) -> None:
        """The caller gives up on a running call: the worker cancels it and is drained, then freed.

        If what the worker says next cannot be trusted (an exception escaped a read of its
        pipe), it is killed and replaced instead. Ignored under a stale ``lease``.
        """
        if lease is not None and lease != handle.lease:
            return
        with self.lock:
            handle.checked_out = False
            handle.owner = None
            if handle.state is WorkerState.DEAD:
                dispose = True
            else:
                move(handle, WorkerState.DRAINING)
                dispose = False
            self._settled()
        supervisor = self._supervise()
        if dispose:
            supervisor.submit(supervisor.dispose, handle)
        elif handle.conn.broken:
            supervisor.submit(supervisor.scrap, handle)
        else:
            supervisor.submit(supervisor.drain, handle, call_id)

    # -- supervisor ------------------------------------------------------------------------------

    def add_worker(self, handle: Worker) -> None:
        """A worker is ready: it serves calls (each of its call slots, if it has several)."""
        woken: list[Ticket] = []
        with self.lock:
            self.start_failure = None
            if handle.slots:
                move(handle, WorkerState.IDLE)  # the process serves: its slots take the calls
            for serving in handle.slots or (handle,):
                self.workers[serving.id] = serving
                self.router.join(serving.id, serving.group)
                woken += self._free(serving)
            self._settled()
        for ticket in woken:
            _wake(ticket)

    def workers_cannot_start(self, error: errors.SnakepitError) -> None:
        """A replacement failed to start. With no worker left, waiting is pointless: calls fail
        at once with this error (until a worker starts again)."""
        with self.lock:
            self.start_failure = error
            refused = self.router.refuse_all(Reason.WORKER_START_FAILED) if not self.workers else []
            self._settled()
        for ticket in refused:
            _wake(ticket)

    def drained(self, handle: Worker) -> None:
        """A cancelled call acknowledged: the worker is clean, and free again (supervisor thread)."""
        reason = self.recycle.reason(handle.process or handle) if self.recycle.active else None
        retiring = None
        with self.lock:
            if handle.state is not WorkerState.DRAINING:
                return
            handle.outstanding.clear()
            handle.current_tool = None
            if reason is not None:
                woken, retiring = self._retire(handle, reason)
            else:
                woken = self._free(handle)
            self._settled()
        if retiring is not None:
            self._supervise().retire(retiring)
        for ticket in woken:
            _wake(ticket)

    def audit(self) -> list[tuple[Worker, list[int]]]:
        """Take back workers an interrupted caller left half-way (supervisor thread).

        A signal handler that raises (Ctrl-C) can interrupt a caller anywhere, even inside the
        pool's own steps; code on the supervisor thread is never interrupted that way (Python
        runs signal handlers on the main thread only). Taken back: a busy worker nobody has
        checked out (given back half-way), and one whose owner was collected without giving it
        back. A worker still processing calls is returned for cancelling and draining; the
        others are free again at once.
        """
        to_drain: list[tuple[Worker, list[int]]] = []
        woken: list[Ticket] = []
        with self.lock:
            for handle in list(self.workers.values()):
                if handle.state is WorkerState.IDLE and not self.router.is_idle(handle.id):
                    woken += self._free(handle)  # the router gave it out, but nobody claimed it
                    continue
                if handle.state is not WorkerState.BUSY:
                    continue
                if handle.checked_out and handle.owner is not None and handle.owner() is not None:
                    continue  # in its owner's hands
                handle.checked_out = False
                handle.owner = None
                handle.lease += 1  # if its owner comes back after all, it owns nothing any more
                if handle.outstanding:
                    move(handle, WorkerState.DRAINING)
                    to_drain.append((handle, list(handle.outstanding)))
                else:
                    woken += self._free(handle)
            self._settled()
        for ticket in woken:
            _wake(ticket)
        return to_drain

    def retire_if_idle(self, handle: Worker, reason: str) -> bool:
        """Take an idle worker (all of a process's call slots) out of service for recycling;
        False if it is no longer idle."""
        with self.lock:
            serving = handle.slots or [handle]
            if any(slot.state is not WorkerState.IDLE for slot in serving):
                return False
            woken = self._retire(serving[0], reason)[0]  # a call slot takes its idle siblings along
            self._settled()
        for ticket in woken:
            _wake(ticket)
        return True

    def _retire(self, handle: Worker, reason: str) -> tuple[list[Ticket], Worker | None]:
        """Out of service for good (lock held); its strict waiters are refused. A call slot is
        parked: its process retires once all its slots are. The tickets to wake, and the worker
        (process) now due to be recycled, if any."""
        move(handle, WorkerState.STOPPING)
        handle.retiring = reason
        self.workers.pop(handle.id, None)
        woken = self.router.remove(handle.id)
        process = handle.process
        if process is None:
            return woken, handle
        for sibling in process.slots or ():  # the idle ones retire now, the busy ones when released
            if sibling.state is WorkerState.IDLE:
                move(sibling, WorkerState.STOPPING)
                sibling.retiring = reason
                self.workers.pop(sibling.id, None)
                woken += self.router.remove(sibling.id)
        if process.state is WorkerState.IDLE and all(
            s.state in (WorkerState.STOPPING, WorkerState.DEAD) for s in process.slots or ()
        ):
            move(process, WorkerState.STOPPING)
            process.retiring = reason
            return woken, process
        return woken, None

    def end(self, handle: Worker, *, on_purpose: bool) -> None:
        """A caller found its worker cannot go on (it read nothing of a call by the deadline, or
        a write was cut half-way): end it now, and take it out of service at once, so that no
        path hands it out again whatever interrupts the caller next (a drain would find the
        answer it wrote before it died); it is replaced like any worker that dies.
        ``on_purpose``: its death says nothing of a crash loop."""
        if on_purpose:
            handle.killed_on_purpose = True
            if handle.process is not None:
                handle.process.killed_on_purpose = True
        handle.conn.kill()
        self.out_of_service(handle)  # before anything that could be interrupted (reaping waits)

    def out_of_service(self, handle: Worker) -> None:
        """A dead (or doomed) worker a caller holds: out of service, and replaced (the caller
        still releases it). A call slot's whole process is: its other slots are dead too, and the
        next call must not be given one before the supervisor hears of the death."""
        process = handle.process or handle
        if self.worker_died(process):
            supervisor = self._supervise()
            supervisor.submit(supervisor.lost, process)

    def worker_died(self, handle: Worker) -> bool:
        """Take a dead worker out of service (any thread, idempotent): a process with its call
        slots, or one slot (whose process is then dead too: its supervisor hears of it). True
        the first time."""
        refused: list[Ticket] = []
        with self.lock:
            if handle.state is WorkerState.DEAD:
                return False
            move(handle, WorkerState.DEAD)
            for serving in handle.slots or [handle]:
                if serving is not handle:
                    if serving.state is WorkerState.DEAD:
                        continue
                    move(serving, WorkerState.DEAD)
                refused += self.router.remove(serving.id)
                self.workers.pop(serving.id, None)
                if serving.checked_out:  # its caller is yet to hear of it: a drain waits for that
                    self._dead_held = [held for held in self._dead_held if held.checked_out] + [serving]
            self._settled()
        for ticket in refused:
            _wake(ticket)
        return True

    def _free(self, handle: Worker) -> list[Ticket]:
        """Back to the pool (lock held): to the oldest waiter allowed to use it, else idle.

        A waiter whose caller has gone (interrupted between two steps, so it never withdrew)
        is passed over and dropped. A call slot whose process is being recycled (a sibling is
        parked already) is parked too, whichever path frees it.
        """
        if handle.session_id is not None:
            self.sessions.touch(handle.session_id, time.monotonic())
        process = handle.process
        if process is not None:
            reason = next((slot.retiring for slot in process.slots or () if slot.retiring is not None), None)
            if reason is not None:
                woken, retiring = self._retire(handle, reason)
                if retiring is not None:
                    supervisor = self._supervise()
                    supervisor.submit(supervisor.retire, retiring)
                return woken
        while True:
            ticket = self.router.release(handle.id)
            if ticket is None:
                move(handle, WorkerState.IDLE)
                handle.idle_since = time.monotonic()
                return []
            if not ticket.abandoned:
                break
            ticket.worker, ticket.refused = None, Reason.POOL_CLOSED
        self._assign(handle, ticket.owner)
        ticket.assigned = (handle, handle.lease)  # taken by _claim; given back if it dies first
        return [ticket]

    @staticmethod
    def _assign(handle: Worker, owner: Owner | None) -> None:
        """``handle`` is ``owner``'s now (lock held), under a new lease; the supervisor's audit
        can tell if that owner vanishes without giving it back."""
        handle.lease += 1
        handle.session_id = None  # set again by _claim for a session's call
        if owner is not None:
            handle.owner = weakref.ref(owner)  # first: if adopt() is interrupted, the audit still knows
            owner.adopt(handle, handle.lease)
        move(handle, WorkerState.BUSY)
        handle.checked_out = True

    # -- life cycle ------------------------------------------------------------------------------

    def open(self) -> None:
        with self.lock:
            self.closed = False

    def drain(self) -> threading.Event:
        """Refuse new calls (``pool_closed``), but serve the waiting ones and let every call that
        holds a worker finish: the event returned is set once no call is left (or at
        :meth:`close`). A map sends no new batch from now on (see :mod:`.mapping`)."""
        with self.lock:
            if self._quiet is None:
                self.draining = True
                self._quiet = threading.Event()
                self._settled()
            return self._quiet

    def _settled(self) -> None:
        """Under a drain (lock held): set its event if no call is left, neither waiting for a
        worker nor holding one -- a live one, or one that died in its hands and that it has not
        given back yet (it is still to report the crash)."""
        quiet = self._quiet
        if quiet is None or quiet.is_set() or self.router.waiting:
            return
        if any(handle.checked_out for handle in self.workers.values()):
            return
        self._dead_held = [handle for handle in self._dead_held if handle.checked_out]
        if not self._dead_held:
            quiet.set()

    def holds(self, caller: object) -> bool:
        """Whether a call begun by ``caller`` (a thread's ident, or an asyncio task) holds a
        worker: a drain it waited for would wait for itself."""
        with self.lock:
            for handle in self.workers.values():
                owner = handle.owner() if handle.checked_out and handle.owner is not None else None
                if owner is not None and getattr(owner, "caller", None) == caller:
                    return True
        return False

    def close(self) -> list[Worker]:
        """Refuse new calls and every waiting one; the workers left to shut down. A drain under
        way ends (its event is set)."""
        with self.lock:
            self.closed = True
            refused = self.router.refuse_all(Reason.POOL_CLOSED)
            handles = list(self.workers.values())
            if self._quiet is not None:
                self._quiet.set()
        for ticket in refused:
            _wake(ticket)
        return handles

    def _supervise(self) -> Supervision:
        assert self.supervisor is not None, "the pool wires its supervisor before starting"
        return self.supervisor

    # -- observation -----------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Open (not closing, not draining), with at least one worker up (what a health probe asks)."""
        return not self.closed and not self.draining and bool(self.workers)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            self.sessions.sweep(time.monotonic())
            # A process serving through call slots is one worker, however many slots it has.
            workers = list({id(w.process or w): w.process or w for w in self.workers.values()}.values())
            infos = [_worker_info(h) for h in workers]
            snapshot = {
                "sessions": len(self.sessions),
                "workers": len(workers),
                "available": self.router.idle,
                "busy": self.router.busy,
                "waiting": self.router.waiting,
                "worker_info": infos,
            }
        for info, handle in zip(infos, workers):  # measured outside the lock
            info["rss"] = handle.conn.memory()
        return snapshot


def _serving(session: SessionState) -> bool:
    """A call of ``session`` is running: the worker its latest call got still serves it."""
    handle = session.serving
    return handle is not None and handle.session_id == session.id and handle.state is WorkerState.BUSY


def _park(ticket: Ticket) -> Any:
    """A lock the calling thread blocks on until the ticket's waker releases it. The ticket
    holds it weakly: once the caller has gone, the ticket is seen abandoned."""
    parked = threading.Lock()
    parked.acquire()
    ticket.waiter = waiter = weakref.ref(parked)
    ticket.waker = lambda: _release(waiter)
    return parked


def _release(waiter: Callable[[], Any]) -> None:
    parked = waiter()
    if parked is not None:
        try:
            parked.release()
        except RuntimeError:  # woken twice
            pass


def _wake(ticket: Ticket) -> None:
    if ticket.waker is not None:
        ticket.waker()


def _worker_info(handle: Worker) -> WorkerInfo:
    info: WorkerInfo = {
        "id": handle.id,
        "slot": handle.slot,
        "pid": handle.pid,
        "node": None if handle.conn is None else handle.conn.node,  # where it runs (Ray: the node's address)
        "node_id": None if handle.conn is None else handle.conn.node_id,  # Ray's id of that node
        "state": handle.state.value,
        "requests": served(handle),
        "started_at": handle.started_at,
        "current_tool": handle.current_tool,
        "rss": None,  # read outside the lock (see snapshot)
    }
    if handle.slots:  # a process running calls on several threads
        busy = [slot for slot in handle.slots if slot.state is not WorkerState.IDLE and slot.state is not WorkerState.STOPPING]
        info["threads"] = len(handle.slots)
        info["busy_threads"] = len(busy)
        info["current_tools"] = [slot.current_tool for slot in busy if slot.current_tool is not None]
        if busy and handle.state is WorkerState.IDLE:
            info["state"] = WorkerState.BUSY.value
    return info

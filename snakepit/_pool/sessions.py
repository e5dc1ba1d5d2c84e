"""The session store: which worker each session is pinned to, and when sessions expire.

Pure logic, no threads: the pool calls it under its checkout lock, with the current time.
Sessions are kept in an ordered dict in least-recently-used order, so the ones that have
expired are always at the front: a sweep looks at expired sessions only and stops at the first
live one (O(expired), no scan of the rest). The pool sweeps on every session operation and
arms one timer for the next expiry, so memory is returned without any polling loop.

A pin names a worker id; ids are never reused, so a pin to a worker that died or was recycled is
recognisably stale: the router refuses a strict call pinned to it (and the pin is then
dropped), and serves a hint call anywhere (and the session is re-pinned there).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snakepit import _errors as errors
from snakepit._errors import Reason
from snakepit._seam.affinity import Affinity

__all__ = ["SessionStore", "SessionState"]


@dataclass(eq=False)
class SessionState:
    id: str
    affinity: Affinity | None  # None: the pool's default
    worker: int | None = None  # pinned worker id
    last_used: float = 0.0
    calls: int = 0
    created_at: float = field(default_factory=time.time)  # wall clock, for those who ask
    metadata: dict[str, str] = field(default_factory=dict)  # what was said of it when it was opened
    serving: Any = None  # the worker its latest call was given (see SessionStore.in_use)


class SessionStore:
    def __init__(self, ttl: float, max_sessions: int) -> None:
        self.ttl: float = ttl
        self.max_sessions: int = max_sessions
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()
        self.expired_total: int = 0
        # A session whose call is still running is in use, however long the call takes: the
        # pool says which are (it knows its workers); a sweep keeps them.
        self.in_use: Callable[[SessionState], bool] = lambda session: False
        # How many live sessions are pinned to each worker group; told when that becomes
        # nonzero or zero again (the router takes pinned workers last for sessionless calls).
        self._pins: dict[int, int] = {}
        self.on_pinned: Callable[[int, bool], None] = lambda group, pinned: None

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def get(self, session_id: str) -> SessionState | None:
        return self._sessions.get(session_id)

    def open(
        self, session_id: str, now: float, affinity: Affinity | None = None, metadata: dict[str, str] | None = None
    ) -> SessionState:
        """The session, created if new (``session_quota_exceeded`` past ``max_sessions``), with
        ``metadata`` if it is new.

        Using a session makes it the most recently used; an explicit ``affinity`` sticks to it.
        """
        self.sweep(now)
        session = self._sessions.get(session_id)
        if session is None:
            if len(self._sessions) >= self.max_sessions:
                raise errors.pool_error(
                    Reason.SESSION_QUOTA_EXCEEDED,
                    f"cannot open session {session_id!r}: max_sessions={self.max_sessions} are open",
                    session_id=session_id,
                )
            session = SessionState(session_id, affinity, metadata=dict(metadata or {}))
            self._sessions[session_id] = session
        else:
            self._sessions.move_to_end(session_id)
            if affinity is not None:
                session.affinity = affinity
        session.last_used = now
        return session

    def close(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self.unpin(session)
        return True

    def pin(self, session: SessionState, group: int) -> None:
        """Pin ``session`` to ``group`` (O(1); nothing to do if it is pinned there already)."""
        if session.worker == group:
            return
        self.unpin(session)
        session.worker = group
        count = self._pins.get(group, 0)
        self._pins[group] = count + 1
        if not count:
            self.on_pinned(group, True)

    def unpin(self, session: SessionState) -> None:
        group = session.worker
        if group is None:
            return
        session.worker = None
        count = self._pins.get(group, 0) - 1
        if count > 0:
            self._pins[group] = count
            return
        self._pins.pop(group, None)
        self.on_pinned(group, False)

    def touch(self, session_id: str, now: float) -> None:
        """A call of the session has just ended: its time to live starts again."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_used = now
            self._sessions.move_to_end(session_id)

    def sweep(self, now: float) -> int:
        """Forget sessions unused for ``ttl`` seconds; how many were forgotten."""
        expired = 0
        sessions = self._sessions
        while sessions:
            session = next(iter(sessions.values()))
            if now - session.last_used < self.ttl:
                break
            if self.in_use(session):  # used right now: as if just used
                session.last_used = now
                sessions.move_to_end(session.id)
                continue
            del sessions[session.id]
            self.unpin(session)
            expired += 1
        self.expired_total += expired
        return expired

    def next_expiry(self) -> float | None:
        """When the least recently used session will expire, if any session is open."""
        if not self._sessions:
            return None
        return next(iter(self._sessions.values())).last_used + self.ttl

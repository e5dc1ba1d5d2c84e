"""Affinity modes: what a call with a session does when its worker is busy or gone."""

from __future__ import annotations

import enum
from typing import Any

from snakepit import _errors as errors
from snakepit._errors import Reason

__all__ = ["Affinity", "parse_affinity"]


class Affinity(enum.StrEnum):
    """Equal to the strings ``"hint"``, ``"strict_queue"`` and ``"strict_fail_fast"``.

    ========================  ==================  =====================================  =============================
    mode                      pinned worker idle  pinned worker busy                     pinned worker gone
    ========================  ==================  =====================================  =============================
    ``HINT``                  runs there          any idle worker (re-pins), else queue  any worker
    ``STRICT_QUEUE``          runs there          waits, FIFO, for that worker           ``session_worker_unavailable``
    ``STRICT_FAIL_FAST``      runs there          ``worker_busy`` at once                ``session_worker_unavailable``
    ========================  ==================  =====================================  =============================
    """

    HINT = "hint"
    STRICT_QUEUE = "strict_queue"
    STRICT_FAIL_FAST = "strict_fail_fast"

    @property
    def strict(self) -> bool:
        return self is not Affinity.HINT


def parse_affinity(value: Any, *, reason: str = Reason.INVALID_ARGUMENTS) -> Affinity:
    """An ``Affinity`` from a member or its string; anything else is a ``validation`` error."""
    if isinstance(value, Affinity):
        return value
    try:
        return Affinity(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in Affinity)
        raise errors.validation(reason, f"unknown affinity {value!r}; expected one of {choices}") from None

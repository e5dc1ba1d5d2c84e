"""The seam between the pool and what runs its workers.

A backend's connection to one worker raises these; the pool's call logic turns them into the
caller's errors (``worker_crashed``, ``timeout``).
"""

from __future__ import annotations


class WorkerGone(Exception):
    """The worker ended (its process exited, or it closed its end of the connection)."""


class DeadlineExceeded(Exception):
    """A wait on the worker reached the call's deadline first."""

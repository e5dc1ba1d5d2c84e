"""What runs the workers: one package per backend, behind the seam of :mod:`.base`.

``process`` runs each worker as a local child process over pipes. The generic pool
(:mod:`snakepit.pool`) decides what to call where and when; a backend carries it out.
"""

from __future__ import annotations

from typing import Any, Mapping

from .. import errors
from ..errors import Reason
from .base import Backend

NAMES = ("process",)


def create(name: Any, adapter: Any, adapter_args: Mapping[str, Any] | None, worker_env: Mapping[str, str] | None) -> Backend:
    """The backend called ``name``, set up to run ``adapter``; ``invalid_config`` if there is none."""
    if name == "process":
        from .process.backend import ProcessBackend
        from .process.launcher import build_launch_spec

        return ProcessBackend(build_launch_spec(adapter, adapter_args, worker_env))
    raise errors.validation(Reason.INVALID_CONFIG, f"unknown backend {name!r}: choose one of {', '.join(map(repr, NAMES))}")

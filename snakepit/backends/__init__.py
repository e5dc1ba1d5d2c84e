"""What runs the workers: one package per backend, behind the seam of :mod:`.base`.

``process`` runs each worker as a local child process over pipes. The generic pool
(:mod:`snakepit.pool`) decides what to call where and when; a backend carries it out.
"""

from __future__ import annotations

from typing import Any, Mapping

from .. import errors
from ..errors import Reason
from .base import Backend

NAMES = ("process", "ray")


def create(
    name: Any,
    adapter: Any,
    adapter_args: Mapping[str, Any] | None,
    worker_env: Any,
    *,
    size: int = 1,
    memory_limit_mb: float | None = None,
    start_method: str | None = None,
    start_timeout: float | None = None,
    telemetry: bool = False,
    threads: int = 1,
    ray_address: str | None = None,
    actor_options: Mapping[str, Any] | None = None,
) -> Backend:
    """The backend called ``name``, set up to run ``adapter``; ``invalid_config`` if there is
    none, or if an option does not apply to it."""
    from .process.launcher import build_launch_spec

    if name == "process":
        from .process.backend import START_METHODS, ProcessBackend

        if ray_address is not None or actor_options is not None:
            raise errors.validation(Reason.INVALID_CONFIG, "ray_address and actor_options apply to backend='ray' only")
        if start_method is None:
            start_method = "forkserver"
        if start_method not in START_METHODS:
            raise errors.validation(
                Reason.INVALID_CONFIG,
                f"unknown start_method {start_method!r}: choose one of {', '.join(map(repr, START_METHODS))}",
            )
        return ProcessBackend(
            build_launch_spec(adapter, adapter_args, worker_env, size=size, telemetry=telemetry, threads=threads),
            start_method,
            start_timeout,
        )
    if name == "ray":
        from .ray.backend import RayBackend

        if memory_limit_mb is not None:
            raise errors.validation(
                Reason.INVALID_CONFIG,
                "memory_limit_mb applies to backend='process' only: give Ray actors a memory budget in actor_options={'memory': ...}",
            )
        if start_method is not None:
            raise errors.validation(
                Reason.INVALID_CONFIG, "start_method applies to backend='process' only: Ray starts its actors"
            )
        if threads > 1:
            raise errors.validation(
                Reason.INVALID_CONFIG,
                "threads_per_worker applies to backend='process' only: a Ray actor runs one call at a time here; "
                "use more workers (size) instead",
            )
        if callable(worker_env):
            raise errors.validation(
                Reason.INVALID_CONFIG,
                "a per-worker worker_env applies to backend='process' only: on Ray, ask for devices in "
                "actor_options (e.g. {'num_gpus': 1}); Ray sets each actor's CUDA_VISIBLE_DEVICES itself",
            )
        options = dict(actor_options or {})
        if worker_env:  # the actors' environment: Ray's runtime_env env_vars
            runtime_env = dict(options.get("runtime_env") or {})
            runtime_env["env_vars"] = {**dict(worker_env), **runtime_env.get("env_vars", {})}
            options["runtime_env"] = runtime_env
        # On a cluster other nodes lack this process's sys.path: the adapter travels with its
        # module's code, unless the user's runtime_env ships that code there.
        shipped = {"working_dir", "py_modules"} & set(options.get("runtime_env") or {})
        by_value = ray_address is not None and not shipped
        return RayBackend(
            build_launch_spec(adapter, adapter_args, None, by_value=by_value, telemetry=telemetry), ray_address, options
        )
    raise errors.validation(Reason.INVALID_CONFIG, f"unknown backend {name!r}: choose one of {', '.join(map(repr, NAMES))}")

"""How a worker is described before it starts: what every backend launches.

A :class:`LaunchSpec` holds everything needed to start one more worker like the others, in a
child process or a Ray actor: the adapter (by import path when the worker can import it by that
name, by value with cloudpickle otherwise: a class in ``__main__``, a notebook cell, a function's
local scope), its arguments, already encoded, the environment, ``sys.path`` and working
directory, and the worker's options.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snakepit import _errors as errors
from snakepit import _protocol as protocol
from snakepit._adapter import BaseAdapter, import_by_path
from snakepit._errors import Reason
from snakepit._remote import remember

__all__ = ["BackendOptions", "LaunchSpec", "WorkerEnv", "adapter_reference", "build_launch_spec"]

# One thread per BLAS/OpenMP runtime per worker: N workers already use N cores.
SINGLE_THREADED_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}


def adapter_reference(adapter: Any, by_value: bool = False) -> Any:
    """How the adapter travels: ``"module:Qualname"`` if importable by that name, else pickled.
    ``by_value``: pickled with its module's code (for machines that cannot import it)."""
    if isinstance(adapter, str):
        if ":" not in adapter:
            raise errors.validation(
                Reason.INVALID_CONFIG, f"adapter string must look like 'package.module:Class', got {adapter!r}"
            )
        return adapter
    if not isinstance(adapter, type):
        raise errors.validation(
            Reason.INVALID_CONFIG, f"adapter must be a class or a 'module:Class' string, got {type(adapter).__name__}"
        )
    if not issubclass(adapter, BaseAdapter):  # refused here, not by every worker at start()
        raise errors.validation(
            Reason.INVALID_CONFIG,
            f"adapter {adapter.__qualname__} must subclass snakepit.BaseAdapter (its @tool methods are found by it)",
        )
    path = f"{adapter.__module__}:{adapter.__qualname__}"
    if by_value:
        return _by_value(adapter)
    if adapter.__module__ != "__main__" and "<locals>" not in path and _resolves(path, adapter):
        return path
    remember(adapter)  # where its code comes from: its frames in workers' tracebacks lose it
    return protocol.pickled(adapter, protocol._cloud_dumps)


def _by_value(adapter: type) -> Any:
    import cloudpickle

    module = sys.modules.get(adapter.__module__)
    registered = False
    if module is not None and adapter.__module__ != "__main__":
        try:
            cloudpickle.register_pickle_by_value(module)
            registered = True
        except ValueError:  # already by value
            pass
    remember(adapter)
    try:
        return protocol.pickled(adapter, protocol._cloud_dumps)
    finally:
        if registered:
            cloudpickle.unregister_pickle_by_value(module)


def _resolves(path: str, adapter: type) -> bool:
    try:
        return import_by_path(path) is adapter
    except Exception:
        return False


WorkerEnv = Mapping[str, str] | Callable[[int], Mapping[str, str]] | None


@dataclass(frozen=True)
class BackendOptions:
    """The pool's options a backend may act on; each backend refuses those that are not its own."""

    size: int = 1
    memory_limit_mb: float | None = None
    start_method: str | None = None
    start_timeout: float | None = None
    threads: int = 1  # threads_per_worker
    ray_address: str | None = None
    actor_options: Mapping[str, Any] | None = None
    preload: tuple[str, ...] = ()  # modules workers will import, beyond the adapter's own (plain functions')


@dataclass
class LaunchSpec:
    """Everything needed to start one more worker like the others."""

    adapter: Any
    adapter_args: Any
    env: Mapping[str, str]  # what every worker's environment holds
    slot_envs: Sequence[Mapping[str, str]] = ()  # a per-slot worker_env's additions, by slot
    cwd: str = field(default_factory=os.getcwd)
    sys_path: list[str] = field(default_factory=lambda: list(sys.path))
    log_level: int = field(default_factory=lambda: logging.getLogger("snakepit.worker").getEffectiveLevel())
    threads: int = 1  # calls a worker runs at once (threads_per_worker)
    preload: tuple[str, ...] = ()  # modules workers will import, beyond the adapter's own

    def env_for(self, slot: int) -> dict[str, str]:
        """The environment of the worker in ``slot`` (and of every replacement of it)."""
        return {**self.env, **self.slot_envs[slot]} if self.slot_envs else dict(self.env)


def build_launch_spec(
    adapter: Any,
    adapter_args: Mapping[str, Any] | None,
    worker_env: WorkerEnv,
    *,
    size: int = 1,
    by_value: bool = False,
    threads: int = 1,
    preload: tuple[str, ...] = (),
) -> LaunchSpec:
    """``worker_env``: a mapping for every worker, or a callable ``(slot) -> mapping`` called
    here once per slot ``0..size-1`` (so its errors are the constructor's)."""
    if adapter_args is not None and not isinstance(adapter_args, Mapping):
        raise errors.validation(Reason.INVALID_CONFIG, "adapter_args must be a mapping of keyword arguments")
    slot_envs: list[dict[str, str]] = []
    if callable(worker_env):
        slot_envs = [_checked_env(_call_env(worker_env, slot), f"worker_env({slot})") for slot in range(size)]
    elif worker_env is not None:
        worker_env = _checked_env(worker_env, "worker_env")
    # Unbuffered, so what a tool prints reaches the owner's logs when it is printed.
    env = {
        **os.environ,
        **SINGLE_THREADED_ENV,
        "PYTHONUNBUFFERED": "1",
        **(worker_env if isinstance(worker_env, Mapping) else {}),
    }
    return LaunchSpec(
        adapter=adapter_reference(adapter, by_value),
        # Encoded now: the boot frame is built on the supervisor thread, where an error would only be logged.
        adapter_args=protocol.wire_value(dict(adapter_args or {}), dumps=protocol._cloud_dumps),
        env=env,
        slot_envs=slot_envs,
        threads=threads,
        preload=preload,
    )


def _call_env(worker_env: Callable[[int], Any], slot: int) -> Any:
    try:
        return worker_env(slot)
    except Exception as exc:
        raise errors.validation(Reason.INVALID_CONFIG, f"worker_env({slot}) raised {type(exc).__name__}: {exc}") from exc


def _checked_env(env: Any, what: str) -> dict[str, str]:
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise errors.validation(Reason.INVALID_CONFIG, f"{what} must be a mapping of str to str, got {env!r}")
    return dict(env)

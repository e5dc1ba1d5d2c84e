"""The Ray backend: each worker a Ray actor, placed anywhere on a Ray cluster.

The generic pool (sessions, affinity, queueing, streaming, cancellation, map, supervision) is
the same as for local processes; this module only starts, watches and stops actors. Ray is the
engine that crosses machines: nothing here does.

* ``Pool(..., backend="ray")`` connects to a running Ray (``ray_address``, or the one this
  process already initialised) or starts a local one, which ``close()`` shuts down again; a Ray
  the user started is never shut down. ``actor_options`` (``num_cpus``, ``num_gpus``,
  ``resources``, ``runtime_env``, ``scheduling_strategy``...) go to ``ray.remote`` as they are.
* Start-up: the actor initialises its adapter in ``start``; an actor Ray cannot place never
  answers, and ``start_timeout`` ends the wait (``worker_start_failed``).
* Death: any call on a dead actor fails (``RayActorError``): the reader thread of a running
  call, a heartbeat, a cancel. Any of them reports the death once.
* Stopping: ``stop`` runs ``cleanup()`` after the calls queued before it, then the actor is
  killed. Ray has no polite kill: terminating is ``ray.kill``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from snakepit import _errors as errors
from snakepit import _protocol as protocol
from snakepit._backends.ray.connection import RayConnection
from snakepit._errors import Reason
from snakepit._protocol import Boot, FrameReader, FromWorker, Ready, StartFailed
from snakepit._seam.backend import Closing, WorkerEvents
from snakepit._seam.launch import BackendOptions, LaunchSpec, build_launch_spec
from snakepit._seam.reactor import Reactor
from snakepit._seam.workers import Worker

log = logging.getLogger("snakepit.ray")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise errors.validation(Reason.INVALID_CONFIG, "backend='ray' needs Ray: pip install 'snakepit-pool[ray]'") from None
    return ray


class RayBackend:
    name = "ray"
    attachments = None  # Ray's object store carries large values itself
    # A call's encode= values are encoded by the owner: an actor's answers cross Ray's object
    # store and a reader thread, which bound a stream well before the owner's encoding does.
    encodes = False

    def __init__(self, launch: LaunchSpec, ray_address: str | None, actor_options: Mapping[str, Any]) -> None:
        self._ray = import_ray()
        self._launch = launch
        self._address = ray_address
        self._options = dict(actor_options or {})
        self._started_ray = False
        self._actor_class: Any = None
        self._reactor: Reactor = None  # type: ignore[assignment]
        self._events: WorkerEvents = None  # type: ignore[assignment]
        self._pool_closing: Closing = None  # type: ignore[assignment]
        self._pending: dict[Any, tuple[str, Worker, Any]] = {}  # control call -> (kind, worker, argument)
        self._pending_lock = threading.Condition()
        self._closing = False
        self._watcher: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, reactor: Reactor, events: WorkerEvents, closing: Closing) -> None:
        ray = self._ray
        self._reactor = reactor
        self._events = events
        self._pool_closing = closing
        if not ray.is_initialized():
            # Without an address, Ray joins any cluster running on this machine: a pool starts its
            # own instead, unless RAY_ADDRESS names one ("auto" asks for Ray's own search).
            address = self._address or os.environ.get("RAY_ADDRESS") or "local"
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
            self._started_ray = True
        from snakepit._backends.ray.actor import SnakepitActor

        actor: Any = SnakepitActor  # a Ray actor class, whatever type checkers make of its decorator
        self._actor_class = actor.options(**self._options) if self._options else actor
        self._watcher = threading.Thread(target=self._watch_control, name="snakepit-ray-watch", daemon=True)
        self._watcher.start()

    def launch(self, worker: Worker) -> None:
        spec = self._launch
        actor = self._actor_class.remote()
        worker.conn = RayConnection(
            self._ray,
            actor,
            self._pool_closing,
            on_control=lambda kind, ref, argument: self._await(kind, ref, worker, argument),
            on_death=lambda: self._reactor.submit(self._gone, worker, None),
        )
        boot = protocol.encode_frame(
            Boot(worker.id, spec.sys_path, spec.cwd, spec.adapter, spec.adapter_args, spec.log_level, worker.listening)
        )
        self._await("start", actor.start.remote(bytes(boot)), worker, None)

    def close(self) -> None:
        with self._pending_lock:
            self._closing = True
            self._pending_lock.notify_all()
        if self._watcher is not None:
            self._watcher.join(5)
        if self._started_ray:
            self._ray.shutdown()

    def slot_connections(self, worker: Worker) -> None:
        return None  # an actor runs one call at a time

    # -- control calls: start, ping, cancel, stop --------------------------------------------------

    def _await(self, kind: str, ref: Any, worker: Worker, argument: Any) -> None:
        with self._pending_lock:
            self._pending[ref] = (kind, worker, argument)
            self._pending_lock.notify_all()

    def _watch_control(self) -> None:
        ray = self._ray
        while True:
            with self._pending_lock:
                while not self._pending and not self._closing:
                    self._pending_lock.wait()
                if self._closing:
                    return
                refs = list(self._pending)
            try:
                done, _ = ray.wait(refs, num_returns=1, timeout=0.1)
            except Exception:  # Ray is shutting down
                return
            for ref in done:
                with self._pending_lock:
                    kind, worker, argument = self._pending.pop(ref)
                try:
                    result, error = ray.get(ref), None
                except Exception as exc:
                    result, error = None, exc
                self._reactor.submit(self._control_done, kind, worker, argument, result, error)

    def _control_done(self, kind: str, worker: Worker, argument: Any, result: Any, error: BaseException | None) -> None:
        conn: RayConnection = worker.conn
        if kind == "start":
            if error is not None:
                if worker.start_error is None:
                    worker.start_error = (f"the actor could not start: {_first_line(error)}", None)
                self._gone(worker, error)
                return
            frame, node, node_id = result
            [started] = FrameReader(FromWorker).feed(frame)
            if type(started) is StartFailed:
                worker.start_error = (started.message, started.traceback)
                conn.kill()
                self._gone(worker, None)
                return
            assert type(started) is Ready
            conn.pid = started.pid
            conn.node = node
            conn.node_id = node_id
            self._events.ready(worker, list(started.tools))
        elif kind == "ping":
            if error is None:
                self._events.pong(worker, argument)
                for fields in result or ():
                    self._events.telemetry(worker, fields)
            else:
                self._gone(worker, error)
        elif kind == "stop":
            conn.kill()  # cleanup() ran (or could not): the actor's work is done
            self._gone(worker, None)
        elif error is not None:  # a cancel that could not reach the actor: it is gone
            self._gone(worker, error)

    def _gone(self, worker: Worker, error: BaseException | None) -> None:
        """The actor ended: tell the supervisor once (on its thread)."""
        conn: RayConnection = worker.conn
        if error is not None:
            conn.mark_dead(_first_line(error))
        if not conn.exit_reported:
            conn.exit_reported = True
            self._events.exited(worker)

    # -- stopping --------------------------------------------------------------------------------

    def ask_to_stop(self, worker: Worker) -> None:
        conn: RayConnection = worker.conn
        if conn.died is None:
            self._await("stop", conn.actor.stop.remote(), worker, None)

    def terminate(self, worker: Worker) -> None:
        worker.conn.kill()  # Ray has no polite kill

    def ended(self, worker: Worker) -> dict[str, Any]:
        return worker.conn.exit_status()

    def dispose(self, worker: Worker) -> None:
        worker.conn.close()

    def finish(self, leftovers: Iterable[Worker], deadline: float | None, kill_grace: float) -> None:
        for worker in leftovers:
            worker.conn.kill()
            worker.conn.exit_status()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def create(adapter: Any, adapter_args: Mapping[str, Any] | None, worker_env: Any, options: BackendOptions) -> RayBackend:
    """The Ray backend for ``adapter``; ``invalid_config`` for an option that is not its own."""
    if options.memory_limit_mb is not None:
        raise errors.validation(
            Reason.INVALID_CONFIG,
            "memory_limit_mb applies to backend='process' only: give Ray actors a memory budget in actor_options={'memory': ...}",
        )
    if options.start_method is not None:
        raise errors.validation(Reason.INVALID_CONFIG, "start_method applies to backend='process' only: Ray starts its actors")
    if options.threads > 1:
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
    if options.actor_options is not None and not isinstance(options.actor_options, Mapping):
        raise errors.validation(Reason.INVALID_CONFIG, "actor_options must be a mapping of ray.remote options")
    actor_options = dict(options.actor_options or {})
    if worker_env:  # the actors' environment: Ray's runtime_env env_vars
        runtime_env = dict(actor_options.get("runtime_env") or {})
        runtime_env["env_vars"] = {**dict(worker_env), **runtime_env.get("env_vars", {})}
        actor_options["runtime_env"] = runtime_env
    # On a cluster other nodes lack this process's sys.path: the adapter travels with its
    # module's code, unless the user's runtime_env ships that code there.
    shipped = {"working_dir", "py_modules"} & set(actor_options.get("runtime_env") or {})
    by_value = options.ray_address is not None and not shipped
    launch = build_launch_spec(adapter, adapter_args, None, by_value=by_value)
    return RayBackend(launch, options.ray_address, actor_options)

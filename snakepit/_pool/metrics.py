"""Prometheus metrics for a pool (the ``metrics`` extra): a collector read at scrape time, and
an HTTP endpoint serving it.

Everything :meth:`Pool.stats` counts is read when Prometheus scrapes, by a custom collector, so
calls pay nothing for it; per-tool outcomes and times are recorded by :mod:`.metering` while
metrics are enabled. Every series has a ``pool`` label, the pool's name in metrics: given to
``enable_metrics``/``serve_metrics``, else ``pool-<n>`` for the process's n-th pool (in the
order they were made). Several pools may share a registry (one collector per registry answers
for all of them, so each metric is one family), as long as their names differ.

This module imports ``prometheus_client`` at first use, never when snakepit is imported: without
it, enabling metrics is ``invalid_config`` naming ``pip install 'snakepit-pool[metrics]'``.

The endpoint (:class:`MetricsServer`) follows ``serve()``'s rule: a loopback address is served
as it is; any other needs a bearer token (every scrape then sends ``Authorization: Bearer
<token>``, else 401) or ``insecure=True``. It binds the address's first host, with address reuse
for ports in TIME_WAIT but never port sharing: a port another server holds fails at once.
"""

from __future__ import annotations

import hmac
import itertools
import socket
import socketserver
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from snakepit import _errors as errors
from snakepit._errors import Reason
from snakepit._pool.metering import BUCKETS, CallMeter, ToolRecord
from snakepit._pool.recycling import RECYCLE_REASONS
from snakepit._seam import binding
from snakepit._seam.backend import DEATH_CAUSES

if TYPE_CHECKING:
    from snakepit._pool.pool import Pool
    from snakepit._pool.stats import PoolStats

__all__ = ["INSTALL_HINT", "MetricsServer", "PoolMetrics"]

INSTALL_HINT = "pip install 'snakepit-pool[metrics]'"
STATES = ("starting", "idle", "busy", "draining", "stopping", "dead")  # a worker's, as stats() says

# (stats() key, metric name, help): counters since the pool started...
_COUNTERS = (
    ("requests", "snakepit_requests", "Calls made (a map's items each count)."),
    ("errors", "snakepit_errors", "Calls that ended in an error."),
    ("queued", "snakepit_queued", "Calls that had to wait for a worker."),
    ("queue_timeouts", "snakepit_queue_timeouts", "Calls that waited for a worker past queue_timeout."),
    ("timeouts", "snakepit_timeouts", "Calls that ran past their timeout."),
    ("pool_saturated", "snakepit_pool_saturated", "Calls refused because max_queue calls were waiting."),
    ("restarts", "snakepit_restarts", "Workers started in the place of others."),
    ("hung", "snakepit_hung", "Idle workers that stopped answering heartbeats (killed and replaced)."),
    ("retries", "snakepit_retries", "Idempotent calls run again after their worker died."),
    ("telemetry_dropped", "snakepit_telemetry_dropped", "Tools' telemetry events dropped: listeners slower than the tools."),
)
# ...and gauges: how things stand now.
_GAUGES = (
    ("size", "snakepit_size", "Worker processes the pool keeps."),
    ("available", "snakepit_available", "Call slots free to take a call (workers times threads_per_worker)."),
    ("busy", "snakepit_busy", "Call slots running a call."),
    ("waiting", "snakepit_waiting", "Calls waiting for a worker (the queue's depth)."),
    ("sessions", "snakepit_sessions", "Open sessions."),
)


def _prometheus() -> Any:
    """prometheus_client's core, or ``invalid_config`` saying how to install it."""
    try:
        from prometheus_client import core
    except ImportError:
        raise errors.validation(Reason.INVALID_CONFIG, f"metrics need prometheus_client: {INSTALL_HINT}") from None
    return core


class PoolMetrics:
    """A pool's metrics, as ``pool.enable_metrics()`` returns them: ``label`` (the pool's
    ``pool`` label), ``registry`` (a ``prometheus_client.CollectorRegistry`` holding this pool's
    metrics alone, which ``serve_metrics`` serves), and ``collect()``, the collector protocol
    (this pool's metric families, read now)."""

    def __init__(self, pool: Pool, label: str, meter: CallMeter) -> None:
        core = _prometheus()
        self.label: str = label
        self.meter: CallMeter = meter  # what the pool's calls record into
        self._pool: weakref.ref[Pool] = weakref.ref(pool)  # a registry kept for ever keeps no pool alive
        self._shared: list[_Pools] = []  # the registries' collectors it is in, beside its own
        self.registry: Any = core.CollectorRegistry()
        self.registry.register(_Pools([self]))

    def collect(self) -> Iterator[Any]:
        """This pool's metric families (``prometheus_client`` Metric objects), read now."""
        return iter(_families([self]))

    def describe(self) -> list[Any]:
        return _families([])

    def _read(self) -> tuple[PoolStats, bool, list[tuple[str, bool]], dict[str, ToolRecord]] | None:
        pool = self._pool()
        if pool is None:
            return None
        records = self.meter.snapshot()
        tools = [(spec.name, spec.supports_streaming) for spec in pool.tools()]
        return pool.stats(), pool.serving, tools, records

    def register(self, registry: Any) -> None:
        """Be scraped from ``registry`` (a ``prometheus_client.CollectorRegistry``, such as its
        default ``REGISTRY``) too, with the other pools registered there, whose labels must
        differ from this one's (else ``invalid_config``). Again: nothing."""
        with _SHARING:
            shared = _SHARED.get(registry)
            if shared is None:
                shared = _Pools([])
                registry.register(shared)
                _SHARED[registry] = shared
            if self in shared.pools:
                return
            if any(other.label == self.label for other in shared.pools):
                raise errors.validation(
                    Reason.INVALID_CONFIG,
                    f"another pool's metrics in this registry are named {self.label!r}: give each pool a label of its own",
                    label=self.label,
                )
            shared.pools = [*shared.pools, self]
            self._shared.append(shared)

    def retire(self) -> None:
        """What closing the pool does: its series leave the registries it was registered in
        (its own :attr:`registry` keeps them)."""
        with _SHARING:
            for shared in self._shared:
                shared.pools = [pool for pool in shared.pools if pool is not self]
            self._shared.clear()


class _Pools:
    """The collector of one registry: every metric once, with a sample per pool."""

    def __init__(self, pools: list[PoolMetrics]) -> None:
        self.pools: list[PoolMetrics] = pools  # replaced whole, never changed in place

    def collect(self) -> Iterator[Any]:
        return iter(_families(self.pools))

    def describe(self) -> list[Any]:
        return _families([])  # the names, for the registry's check against clashes


_SHARING = threading.Lock()
_SHARED: weakref.WeakKeyDictionary[Any, _Pools] = weakref.WeakKeyDictionary()


def _families(pools: Iterable[PoolMetrics]) -> list[Any]:
    core = _prometheus()
    from prometheus_client.utils import floatToGoString

    counters = {key: core.CounterMetricFamily(name, text, labels=["pool"]) for key, name, text in _COUNTERS}
    gauges = {key: core.GaugeMetricFamily(name, text, labels=["pool"]) for key, name, text in _GAUGES}
    serving = core.GaugeMetricFamily(
        "snakepit_serving", "1 while the pool can take a call (started, a worker up).", labels=["pool"]
    )
    workers = core.GaugeMetricFamily("snakepit_workers", "Worker processes by state.", labels=["pool", "state"])
    quarantined = core.GaugeMetricFamily(
        "snakepit_quarantined_slots", "Worker slots waiting out a back-off after repeated deaths.", labels=["pool"]
    )
    recycled = core.CounterMetricFamily(
        "snakepit_recycled", "Healthy workers replaced anyway, by reason.", labels=["pool", "reason"]
    )
    deaths = core.CounterMetricFamily("snakepit_worker_deaths", "Workers that died, by cause.", labels=["pool", "cause"])
    calls = core.CounterMetricFamily(
        "snakepit_calls",
        "Calls ended, by tool and outcome (ok, an error's reason, or cancelled).",
        labels=["pool", "tool", "outcome"],
    )
    chunks = core.CounterMetricFamily("snakepit_stream_chunks", "Stream chunks delivered to callers.", labels=["pool", "tool"])
    queue = core.HistogramMetricFamily(
        "snakepit_call_queue_seconds", "From a call's start to its first worker.", labels=["pool", "tool"]
    )
    run = core.HistogramMetricFamily(
        "snakepit_call_run_seconds",
        "From a call's first worker to its end (a map item: its batch's share).",
        labels=["pool", "tool"],
    )
    bounds = [floatToGoString(bound) for bound in BUCKETS] + ["+Inf"]

    def histogram(family: Any, labels: list[str], counts: list[int], total: float) -> None:
        family.add_metric(labels, list(zip(bounds, itertools.accumulate(counts))), total)

    for pool in pools:
        read = pool._read()
        if read is None:
            continue
        stats, up, tools, records = read
        label = pool.label
        for key, family in counters.items():
            family.add_metric([label], stats[key])  # type: ignore[literal-required]
        for key, family in gauges.items():
            family.add_metric([label], stats[key])  # type: ignore[literal-required]
        serving.add_metric([label], 1 if up else 0)
        states = dict.fromkeys(STATES, 0)
        for info in stats["worker_info"]:
            states[info["state"]] = states.get(info["state"], 0) + 1
        for state, count in states.items():
            workers.add_metric([label, state], count)
        quarantined.add_metric([label], len(stats["quarantined"]))
        for reason in RECYCLE_REASONS:
            recycled.add_metric([label, reason], stats["recycled_by_reason"].get(reason, 0))
        for cause in DEATH_CAUSES:
            deaths.add_metric([label, cause], stats["deaths_by_cause"].get(cause, 0))
        streaming = {name for name, streams in tools if streams}
        for name, _ in tools:  # every tool's calls from the start, as ok: rate() needs a first zero
            records.setdefault(name, ToolRecord())
        for tool, record in sorted(records.items()):
            outcomes = record.outcomes or {"ok": 0}
            for outcome, count in sorted(outcomes.items()):
                calls.add_metric([label, tool, outcome], count)
            if tool in streaming or record.chunks:
                chunks.add_metric([label, tool], record.chunks)
            if any(record.queue):  # the histograms of tools that were called (a map's: no queue time)
                histogram(queue, [label, tool], record.queue, record.queue_sum)
            if any(record.run):
                histogram(run, [label, tool], record.run, record.run_sum)
    return [
        *counters.values(),
        *gauges.values(),
        serving,
        workers,
        quarantined,
        recycled,
        deaths,
        calls,
        chunks,
        queue,
        run,
    ]


class MetricsServer:
    """A running metrics endpoint (see :meth:`snakepit.Pool.serve_metrics`): ``address``
    (``host:port``), ``port``, ``url`` (its ``/metrics``), ``stop()``; a context manager."""

    def __init__(
        self, registry: Any, address: str = "127.0.0.1:9464", *, token: str | None = None, insecure: bool = False
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise errors.validation(Reason.INVALID_CONFIG, "token must be a non-empty str")
        _prometheus()
        from prometheus_client import make_wsgi_app

        where = binding.plan(address)
        if where.unix:
            raise errors.validation(Reason.INVALID_CONFIG, f"metrics are served on host:port, not {address!r}", address=address)
        if not (where.loopback_only or token or insecure):
            raise errors.validation(
                Reason.INVALID_CONFIG,
                f"refusing to serve the pool's metrics on {address!r} to anyone who connects: give a token, "
                "bind a loopback address, or pass insecure=True",
                address=address,
            )
        host = where.hosts[0]
        app = _Guarded(make_wsgi_app(registry), token)
        try:
            self._httpd: WSGIServer = make_server(
                host, where.port, app, _Server6 if ":" in host else _Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise errors.validation(
                Reason.INVALID_CONFIG, f"cannot serve metrics on {address!r}: {exc.strerror or exc}", address=address
            ) from None
        self.port: int = self._httpd.server_address[1]
        self.address: str = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.5,), name="snakepit-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        """Stop serving and free the port (a scrape under way may still finish); again: nothing."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<snakepit MetricsServer {self.url}{' stopped' if self._stopped else ''}>"


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A scrape per thread; bound without port sharing (``allow_reuse_address`` only lets a port
    in TIME_WAIT be bound again), and without the reverse DNS look-up ``HTTPServer`` makes."""

    daemon_threads = True
    block_on_close = False  # stop() never waits for a slow scrape
    allow_reuse_port = False

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


class _Guarded:
    """The metrics app behind the bearer token (if any) and at ``/metrics`` only."""

    def __init__(self, app: Callable[..., Any], token: str | None) -> None:
        self._app = app
        self._expected = None if token is None else token.encode()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._expected is not None:
            scheme, _, credentials = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
            # The scheme is case-insensitive (RFC 7235); the token, compared in constant time, is not.
            if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self._expected):
                start_response(
                    "401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")]
                )
                return [b"missing or wrong bearer token (header 'Authorization: Bearer <token>')\n"]
        if environ.get("PATH_INFO") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"the metrics are at /metrics\n"]
        return self._app(environ, start_response)

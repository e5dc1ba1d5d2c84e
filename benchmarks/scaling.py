"""Scaling: how snakepit's costs grow with workers, sessions, waiting calls and streams.

Every curve is measured in one run, each point ``--repeats`` times; a table gives per point the
median over the repeats, their range and the ratio to the curve's first point. All pools host
``benchmarks._scaling_adapters:Scaling`` (importable by name, so workers fork warm from the
template). The curves:

* **pool size** (1, 4, 16, 64 workers): p50 and p99 round trip of a tiny ``execute``
  (``echo(n) -> n``) from one caller, and from 8 threads calling at once (on small pools they
  queue: their p50 includes the wait); and the memory the workers and their template take (the
  sum of their USS and of their PSS, ``psutil``; the template is the owner's child the workers
  were forked from);
* **live sessions** (0, 10,000, 100,000, opened with ``pool.session(...)``, ``max_sessions``
  raised, on 4 workers): the one-caller p50/p99 of sessionless calls and of calls with a
  session, and what opening a session costs (time, and the owner's USS per session). A pin is a
  field of its session, so an unpinned session weighs on routing as a pinned one does;
* **calls waiting** (0, 100, 1,000, on 4 workers, ``max_queue`` raised, ``queue_timeout=None``):
  the waiters are ``strict_queue`` calls whose sessions are pinned to one worker, held busy by a
  call blocked on a FIFO; the measured calls (sessionless, one caller) run on the other three.
  Then the **time to a freed worker** (1, 100, 1,000 waiters): the holding call records
  ``time.time()`` as it returns in its worker, each waiter as it starts in it; the gap to the
  first waiter's start is the hand-over (the result's trip to the owner, the check-in, the
  waiter's call sent and begun). Waiters are ``pool.submit`` futures, so they wait on the
  pool's event loop thread;
* **concurrent streams** (1, 16, 256 on ``Pool(size=16, threads_per_worker=16)``): aggregate
  chunks/s of ``--chunks`` small chunks split among the streams, each stream consumed in a thread
  of its own, and as ``astream`` s on one event loop; and the owner's memory per open stream:
  (its USS with N streams open, each having delivered its first chunk, minus its USS with the
  same pool idle just before) / N, and the same for the Python allocations ``tracemalloc``
  traces (USS moves by whole pages, and not at all while freed arenas have room);
* **map** (1, 2, 4, 16 workers): ``pool.map`` tasks/s over ``--tasks`` tiny tasks;
* **start-up** (1, 4, 16, 64 workers): ``Pool(size=N)`` until every worker is ready, each in a
  fresh owner process (as ``benchmarks.startup`` measures it);
* **idle CPU** (1, 16, 64 workers): the CPU time the owner process, the template and the other
  children of the owner (the janitor), and the workers use while the pool sits idle after
  serving calls and a stream, over windows of ``--idle-seconds``, given per 60 s. Each
  process's time is the sum over its threads of the kernel's exact runtime
  (``/proc/PID/task/TID/schedstat``, nanoseconds; psutil's ``cpu_times`` where there is none: they
  count whole clock ticks, 10 ms, which 64 processes using a few ms each would drown in). The
  owner's benchmark thread sleeps meanwhile; it is read last before the window and first after;
* **replacement under load** (on the 64-worker pool of the first curve): while 4 threads keep
  calling, one worker (a pid from ``pool.stats()["worker_info"]``) is killed with SIGKILL, a
  different slot each repeat; timed from the kill until ``stats()`` lists the full count of
  ready (idle or busy) workers again, none of them the one killed.

On a 2-CPU machine 64 workers and 8 (or 256) callers share two cores: what grows with the pool
there is mostly the scheduler's work, and the figures are the owner's costs under that load.

Run: ``python -m benchmarks.scaling [--repeats R] [--calls N] [--quick] [--json out.json]``
(``python -m benchmarks scaling``; ``--curves idle,streams`` runs only the curves named). ``--quick``
(CI) uses pool sizes 1 and 4, 1,000 sessions, 16 streams, fewer calls, idle windows of a second
and one repeat; the full run takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import psutil

from snakepit import Pool, SnakepitError

from ._harness import common_options, emit_json, print_curve
from .startup import pool_start
from .stream_throughput import bench_concurrent_streams

ADAPTER = "benchmarks._scaling_adapters:Scaling"
CALLERS = 8  # threads of the many-callers column
LOAD_THREADS = 4  # callers keeping the pool busy while a worker is killed
READY = ("idle", "busy")
CURVES = ("pool_size", "sessions", "waiting", "streams", "idle", "map", "startup")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def _workers(size: int) -> str:
    return f"{size} worker" if size == 1 else f"{size} workers"


def _until(condition: Callable[[], bool], limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the pool did not get there in time")
        time.sleep(0.0005)


def one_caller(pool: Pool, calls: int, session_id: str | None = None) -> list[float]:
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        pool.execute("echo", {"n": i}, session_id=session_id, timeout=60)
        samples.append(time.perf_counter() - start)
    return samples


def many_callers(pool: Pool, calls: int, threads: int = CALLERS) -> list[float]:
    """``calls`` round trips split among ``threads`` callers started together."""
    barrier = threading.Barrier(threads)
    samples: list[list[float]] = [[] for _ in range(threads)]

    def caller(mine: list[float]) -> None:
        barrier.wait()
        mine.extend(one_caller(pool, calls // threads))

    workers = [threading.Thread(target=caller, args=(s,)) for s in samples]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return [v for s in samples for v in s]


def pool_memory(pool: Pool) -> dict[str, float]:
    """MB: the sum of the USS and of the PSS of the pool's workers and their template."""
    pids = [w["pid"] for w in pool.stats()["worker_info"] if w["pid"] is not None]
    children = {p.pid for p in psutil.Process().children()}
    processes = [psutil.Process(pid) for pid in pids]
    templates = {p.ppid() for p in processes} & children  # forked from the template, our child
    processes += [psutil.Process(pid) for pid in templates]
    infos = [p.memory_full_info() for p in processes]
    return {
        "uss_mb": sum(i.uss for i in infos) / 2**20,
        "pss_mb": sum(i.pss for i in infos) / 2**20,
        "processes": len(infos),
        "template": len(templates),
    }


def replacement(pool: Pool, kills: int) -> list[float]:
    """Seconds from SIGKILL to one worker until ``stats()`` shows every slot ready again, while
    ``LOAD_THREADS`` callers keep calling."""
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                pool.execute("echo", {"n": 1}, timeout=60)
            except SnakepitError:  # the call on the killed worker: worker_crashed
                pass

    callers = [threading.Thread(target=load) for _ in range(LOAD_THREADS)]
    for thread in callers:
        thread.start()
    samples = []
    try:
        for k in range(kills):
            infos = pool.stats()["worker_info"]
            victim = sorted(infos, key=lambda w: w["slot"])[k % len(infos)]["pid"]
            assert victim is not None
            killed = time.perf_counter()
            os.kill(victim, signal.SIGKILL)

            def ready(victim: int = victim) -> bool:
                infos = pool.stats()["worker_info"]
                return sum(w["state"] in READY and w["pid"] != victim for w in infos) == pool.size

            _until(ready)
            samples.append(time.perf_counter() - killed)
    finally:
        stop.set()
        for thread in callers:
            thread.join()
    return samples


def curve_pool_size(sizes: list[int], calls: int, repeats: int, kills: int) -> dict[str, Any]:
    rows: list[tuple[str, dict[str, list[float]]]] = []
    memory_rows: list[tuple[str, dict[str, list[float]]]] = []
    replaced: list[float] = []
    memory: dict[str, float] = {}
    for size in sizes:
        columns: dict[str, list[float]] = {"1 caller p50": [], "1 caller p99": [], "8 threads p50": [], "8 threads p99": []}
        with Pool(ADAPTER, size=size) as pool:
            one_caller(pool, 100)  # warm
            for _ in range(repeats):
                single = one_caller(pool, calls)
                many = many_callers(pool, calls)
                columns["1 caller p50"].append(_pct(single, 0.5))
                columns["1 caller p99"].append(_pct(single, 0.99))
                columns["8 threads p50"].append(_pct(many, 0.5))
                columns["8 threads p99"].append(_pct(many, 0.99))
            memory = pool_memory(pool)
            memory_rows.append(
                (
                    _workers(size),
                    {
                        "USS sum MB": [memory["uss_mb"]],
                        "PSS sum MB": [memory["pss_mb"]],
                        "USS sum / workers MB": [memory["uss_mb"] / size],
                    },
                )
            )
            if size == sizes[-1]:
                logger = logging.getLogger("snakepit")
                level = logger.level
                logger.setLevel(logging.CRITICAL)  # the kills are on purpose
                try:
                    replaced = [s * 1000 for s in replacement(pool, kills)]
                finally:
                    logger.setLevel(level)
        rows.append((_workers(size), columns))
    n = calls * repeats
    table = print_curve(
        f"Round trip of a tiny execute by pool size (us; {n:,} calls per column in {repeats} repeats; median (range) vs 1st)",
        "pool",
        rows,
    )
    memory_table = print_curve(
        "Memory of the workers and their template (MB, one reading; the template counted once)",
        "pool",
        memory_rows,
    )
    replace_table = print_curve(
        f"Replacement of a SIGKILLed worker under load ({LOAD_THREADS} callers), {sizes[-1]} workers, {kills} kills (ms)",
        "pool",
        [(_workers(sizes[-1]), {"kill to all ready": replaced})],
    )
    return {"round_trip_us": table, "memory_mb": memory_table, "replacement_ms": replace_table}


def curve_sessions(counts: list[int], calls: int, repeats: int) -> dict[str, Any]:
    rows = []
    opening: dict[str, dict[str, float]] = {}
    owner = psutil.Process()
    with Pool(ADAPTER, size=4, max_sessions=counts[-1] + 10) as pool:
        one_caller(pool, 100, session_id="measured")
        opened = 0
        for count in counts:
            gc.collect()
            before, started = owner.memory_full_info().uss, time.perf_counter()
            for i in range(opened, count):
                pool.session(f"idle-{i}")
            if count > opened:
                elapsed = time.perf_counter() - started
                gc.collect()
                grown = owner.memory_full_info().uss - before
                opening[str(count)] = {
                    "us_per_session": elapsed / (count - opened) * 1e6,
                    "bytes_per_session": grown / (count - opened),
                }
            opened = count
            assert pool.stats()["sessions"] == count + 1
            columns: dict[str, list[float]] = {"sessionless p50": [], "sessionless p99": [], "session p50": [], "session p99": []}
            for _ in range(repeats):
                plain = one_caller(pool, calls)
                pinned = one_caller(pool, calls, session_id="measured")
                columns["sessionless p50"].append(_pct(plain, 0.5))
                columns["sessionless p99"].append(_pct(plain, 0.99))
                columns["session p50"].append(_pct(pinned, 0.5))
                columns["session p99"].append(_pct(pinned, 0.99))
            rows.append((f"{count:,} sessions", columns))
    table = print_curve(
        f"Round trip by live sessions, 4 workers, one caller (us; {calls * repeats:,} calls per column; median (range) vs 1st)",
        "sessions",
        rows,
    )
    for count, cost in opening.items():
        print(
            f"opening sessions up to {int(count):,}: {cost['us_per_session']:.1f} us and "
            f"{cost['bytes_per_session']:,.0f} bytes of the owner's USS per session"
        )
    return {"round_trip_us": table, "opening": opening}


class HeldWorker:
    """A pool of 4 whose last worker serves ``max_waiters`` sessions (and ``holder``), pinned to
    it while the other three were held; ``cycle`` holds it with a call blocked on a FIFO."""

    def __init__(self, pool: Pool, max_waiters: int, fifos: str) -> None:
        self.pool, self.fifos, self.made = pool, fifos, 0
        others = [pool.submit("hold", {"fifo": self._fifo()}) for _ in range(pool.size - 1)]
        _until(lambda: pool.stats()["busy"] == pool.size - 1)
        pids = {pool.execute("pid", session_id=f"waiter-{i}") for i in range(max_waiters)}
        pids.add(pool.execute("pid", session_id="holder"))
        assert len(pids) == 1, "the sessions should all be pinned to the one idle worker"
        self.pid = pids.pop()
        for index in range(len(others)):
            self._release(os.path.join(fifos, str(index)))
        for other in others:
            other.result(60)

    def _fifo(self) -> str:
        path = os.path.join(self.fifos, str(self.made))
        self.made += 1
        os.mkfifo(path)
        return path

    @staticmethod
    def _release(path: str) -> None:
        with open(path, "wb"):  # opens once the holding call has opened it to read
            pass

    def cycle(self, waiters: int, measure: Callable[[], Any] | None) -> tuple[Any, float | None]:
        """Hold the worker, queue ``waiters`` calls for it, ``measure()``, release it: what
        ``measure`` returned and the seconds from the holding call's end to the first waiter's
        start in the worker."""
        pool = self.pool
        fifo = self._fifo()
        held = pool.submit("hold", {"fifo": fifo}, session_id="holder", affinity="strict_queue", timeout=120)
        _until(lambda: any(w["pid"] == self.pid and w["state"] == "busy" for w in pool.stats()["worker_info"]))
        queued: list[Future[Any]] = [
            pool.submit("started", session_id=f"waiter-{i}", affinity="strict_queue", timeout=120) for i in range(waiters)
        ]
        _until(lambda: pool.stats()["waiting"] >= waiters)
        measured = measure() if measure else None
        self._release(fifo)
        ended = held.result(60)[1]
        starts = [f.result(120) for f in queued]
        os.unlink(fifo)
        return measured, (min(starts) - ended if starts else None)


def curve_waiting(counts: list[int], handovers: list[int], calls: int, repeats: int) -> dict[str, Any]:
    rows = []
    handover_rows = []
    top = max(counts + handovers)
    with tempfile.TemporaryDirectory() as fifos, Pool(ADAPTER, size=4, max_queue=top + 100, queue_timeout=None) as pool:
        held = HeldWorker(pool, top, fifos)
        one_caller(pool, 100)
        for count in counts:
            columns: dict[str, list[float]] = {"p50": [], "p99": []}
            for _ in range(repeats):
                latencies, _gap = held.cycle(count, lambda: one_caller(pool, calls))
                columns["p50"].append(_pct(latencies, 0.5))
                columns["p99"].append(_pct(latencies, 0.99))
            rows.append((f"{count:,} waiting", columns))
        for count in handovers:
            gaps = []
            for _ in range(repeats):
                _, gap = held.cycle(count, None)
                assert gap is not None
                gaps.append(gap * 1e6)
            handover_rows.append((f"{count:,} waiting", {"release to waiter running": gaps}))
    table = print_curve(
        "Round trip of sessionless calls on 3 free workers while calls wait for the 4th "
        f"(us; {calls * repeats:,} calls; median (range) vs 1st)",
        "queue",
        rows,
    )
    handover = print_curve(
        f"Time to a freed worker: its holding call's end to the first waiter's start (us; {repeats} repeats)",
        "queue",
        handover_rows,
    )
    return {"round_trip_us": table, "handover_us": handover}


def threaded_streams(pool: Pool, streams: int, chunks: int) -> float:
    """Aggregate chunks/s of ``chunks`` split among ``streams`` streams, each in a thread."""
    return bench_concurrent_streams(pool, chunks // streams, streams)


def async_streams(pool: Pool, streams: int, chunks: int) -> float:
    each = chunks // streams

    async def consume() -> int:
        seen = 0
        async for _ in pool.astream("numbers", {"n": each}):
            seen += 1
        return seen

    async def run_all() -> float:
        start = time.perf_counter()
        assert sum(await asyncio.gather(*(consume() for _ in range(streams)))) == streams * each
        return streams * each / (time.perf_counter() - start)

    return asyncio.run(run_all())


def stream_memory(pool: Pool, streams: int) -> tuple[float, float]:
    """Bytes per open stream (each past its first chunk) of the owner's USS, and of the Python
    allocations ``tracemalloc`` sees made meanwhile and still live (USS moves by pages, and not
    at all while freed arenas have room)."""
    owner = psutil.Process()
    gc.collect()
    tracemalloc.start()
    idle = owner.memory_full_info().uss
    handles = [pool.stream("parked") for _ in range(streams)]
    for handle in handles:
        next(handle)
    gc.collect()
    busy = owner.memory_full_info().uss
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for handle in handles:
        handle.close()
    return (busy - idle) / streams, traced / streams


def curve_streams(counts: list[int], size: int, threads: int, chunks: int, repeats: int) -> dict[str, Any]:
    rows = []
    memory_rows = []
    with Pool(ADAPTER, size=size, threads_per_worker=threads) as pool:
        threaded_streams(pool, 1, 1000)  # warm
        async_streams(pool, 1, 1000)
        stream_memory(pool, 1)
        for count in counts:
            columns: dict[str, list[float]] = {"threads chunks/s": [], "astreams chunks/s": []}
            for _ in range(repeats):
                columns["threads chunks/s"].append(threaded_streams(pool, count, chunks))
                columns["astreams chunks/s"].append(async_streams(pool, count, chunks))
            rows.append((f"{count} streams", columns))
            if count > 1:  # one stream's few KB are below what a USS reading resolves
                per_stream = [stream_memory(pool, count) for _ in range(repeats)]
                memory_rows.append(
                    (
                        f"{count} streams",
                        {
                            "USS KB per stream": [uss / 1024 for uss, _ in per_stream],
                            "traced KB per stream": [traced / 1024 for _, traced in per_stream],
                        },
                    )
                )
    table = print_curve(
        f"Concurrent streams on Pool(size={size}, threads_per_worker={threads}), {chunks:,} chunks split among them "
        "(chunks/s aggregate; median (range) vs 1st)",
        "streams",
        rows,
        digits=0,
    )
    memory = print_curve(
        "The owner's memory per open stream (KB over the idle pool: USS; Python allocations traced)", "streams", memory_rows
    )
    return {"chunks_per_s": table, "owner_kb_per_stream": memory}


def cpu_seconds(pid: int) -> float:
    """The CPU time ``pid``'s threads have used, exact where Linux's schedstat says it."""
    try:
        return sum(_thread_runtime(pid, tid) for tid in os.listdir(f"/proc/{pid}/task")) / 1e9
    except OSError:  # no /proc (or it ended): psutil's clock ticks
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system


def _thread_runtime(pid: int, tid: str) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except FileNotFoundError:  # the thread ended meanwhile
        return 0


def idle_cpu(pool: Pool, seconds: float) -> dict[str, float]:
    """CPU seconds per 60 s of the owner, of its other children (template, janitor) and of the
    workers, over ``seconds`` of the pool sitting idle."""
    workers = {w["pid"] for w in pool.stats()["worker_info"] if w["pid"] is not None}
    others = {p.pid for p in psutil.Process().children(recursive=True)} - workers
    groups = {"workers": sorted(workers), "template, janitor": sorted(others)}
    before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
    before["owner"] = cpu_seconds(os.getpid())  # last before the window, first after: our own reads stay out
    started = time.perf_counter()
    time.sleep(seconds)
    owner = cpu_seconds(os.getpid())
    elapsed = time.perf_counter() - started
    used = {"owner": owner - before["owner"]}
    used.update({name: sum(cpu_seconds(pid) for pid in pids) - before[name] for name, pids in groups.items()})
    used["total"] = sum(used.values())
    return {name: value * 60 / elapsed for name, value in used.items()}


def curve_idle(sizes: list[int], seconds: float, repeats: int) -> dict[str, Any]:
    rows = []
    for size in sizes:
        with Pool(ADAPTER, size=size) as pool:
            one_caller(pool, 100 * size)  # served calls, spread over the workers by 8 threads below
            many_callers(pool, 100 * size)
            threaded_streams(pool, 1, 1000)
            time.sleep(0.5)
            samples = [idle_cpu(pool, seconds) for _ in range(repeats)]
        rows.append((_workers(size), {f"{name} s": [s[name] for s in samples] for name in samples[0]}))
    table = print_curve(
        f"CPU time of an idle pool, per 60 s ({repeats} windows of {seconds:g} s; median (range) vs 1st)",
        "pool",
        rows,
        digits=3,
    )
    return {"cpu_s_per_60s": table}


def curve_map(sizes: list[int], tasks: int, repeats: int) -> dict[str, Any]:
    items = [{"n": i} for i in range(tasks)]
    rows = []
    for size in sizes:
        samples = []
        with Pool(ADAPTER, size=size) as pool:
            sum(1 for _ in pool.map("echo", items[:1000]))  # warm
            for _ in range(repeats):
                start = time.perf_counter()
                assert sum(1 for _ in pool.map("echo", items)) == tasks
                samples.append(tasks / (time.perf_counter() - start))
        rows.append((_workers(size), {"tasks/s": samples}))
    table = print_curve(f"pool.map of {tasks:,} tiny tasks by pool size (median (range) vs 1st)", "pool", rows, digits=0)
    return {"tasks_per_s": table}


def curve_startup(sizes: list[int], repeats: int) -> dict[str, Any]:
    rows = []
    for size in sizes:
        samples = [pool_start(ADAPTER, size, "forkserver") for _ in range(repeats)]
        rows.append(
            (
                _workers(size),
                {"start-up ms": [s["seconds"] * 1000 for s in samples], "USS per worker MB": [s["uss_mb"] for s in samples]},
            )
        )
    table = print_curve(
        f"Start-up until every worker is ready, a fresh owner each time ({repeats} repeats; median (range) vs 1st)", "pool", rows
    )
    return {"startup": table}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="round trips per column and repeat")
    parser.add_argument("--chunks", type=int, default=200_000, help="chunks per streams run, split among the streams")
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks per map run")
    parser.add_argument("--idle-seconds", type=float, default=4.0, help="each window of the idle CPU curve")
    parser.add_argument(
        "--curves", default=",".join(CURVES), help=f"which curves, comma-separated (default: all of {','.join(CURVES)})"
    )
    common_options(parser)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.repeats, opts.calls, opts.chunks, opts.tasks, opts.idle_seconds = 1, 320, 20_000, 5_000, 1.0
        sizes, sessions, waiting, handovers = [1, 4], [0, 1_000], [0, 100], [1, 100]
        streams, stream_pool, map_sizes, startup_sizes, kills = [1, 16], (2, 8), [1, 2], [1, 4], 2
        idle_sizes = [1, 4]
    else:
        sizes, sessions, waiting, handovers = [1, 4, 16, 64], [0, 10_000, 100_000], [0, 100, 1_000], [1, 100, 1_000]
        streams, stream_pool, map_sizes, startup_sizes, kills = [1, 16, 256], (16, 16), [1, 2, 4, 16], [1, 4, 16, 64], 5
        idle_sizes = [1, 16, 64]
    chosen = opts.curves.split(",")
    unknown = set(chosen) - set(CURVES)
    if unknown:
        parser.error(f"unknown curve(s) {', '.join(sorted(unknown))}: choose from {', '.join(CURVES)}")
    payload: dict[str, Any] = {"benchmark": "scaling", "quick": opts.quick, "repeats": opts.repeats}
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "pool_size": lambda: curve_pool_size(sizes, opts.calls, opts.repeats, kills),
        "sessions": lambda: curve_sessions(sessions, opts.calls, opts.repeats),
        "waiting": lambda: curve_waiting(waiting, handovers, opts.calls, opts.repeats),
        "streams": lambda: curve_streams(streams, *stream_pool, opts.chunks, opts.repeats),
        "idle": lambda: curve_idle(idle_sizes, opts.idle_seconds, opts.repeats),
        "map": lambda: curve_map(map_sizes, opts.tasks, opts.repeats),
        "startup": lambda: curve_startup(startup_sizes, 3 if not opts.quick else 1),
    }
    for name in CURVES:
        if name in chosen:
            payload[name] = runs[name]()
    emit_json(opts.json, payload)
    return payload


if __name__ == "__main__":
    main()

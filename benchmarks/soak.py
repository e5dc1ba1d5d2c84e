"""Soak: every kind of call at once, for minutes, while workers are SIGKILLed at random.

Two pools run side by side, ``Pool(SoakAdapter, size=3)`` (one call per worker process) and
``Pool(ThreadedSoakAdapter, size=2, threads_per_worker=4)``, each also served over gRPC
(``pool.serve("127.0.0.1:0")``). Load threads keep calling them, in-process and through
``snakepit.grpc.Client``s at the same time:

* ``execute``: ``add`` (the exact sum), ``echo`` of a random nested value (the same value, types
  included), ``nap`` (sleeps 1-50 ms, answers the caller's own token);
* ``stream``: ``stream()`` and ``execute_stream()`` of ``count`` (exactly ``0..n-1``, in order,
  no gap; also the prefix received before an error), some left early with ``break`` or ``HALT``,
  a few long enough (1 s) to be killed mid-way;
* ``map``: a few hundred items of ``square`` (every result checked, in order or not);
* ``session_strict`` / ``session_hint``: a per-session counter kept in the worker. A
  ``strict_queue`` session stays on one worker process and its counter goes 1, 2, 3...; after
  ``session_worker_unavailable`` or ``worker_crashed`` it starts afresh (a new session id). A
  ``hint`` session may move, but on each worker its counter only ever goes up by one;
* ``async``: an asyncio thread running ``aexecute``, ``astream`` and ``amap`` on the pools, with
  calls and streams cancelled by cancelling their task; ``grpc_async``: the same thread's
  ``aexecute``/``astream`` on Clients, some cancelled too;
* ``grpc`` / ``grpc_session``: Client ``execute``, ``stream``, ``execute_stream`` and sessions;
* a killer: every 1.5-4 s, SIGKILL of one random worker of a random pool (a pid from
  ``pool.stats()["worker_info"]``, checked to be a descendant of this process).

Every call is timed and classified: ok; wrong result; hang (it took more than twice its own
timeout to return or raise; a watchdog reports calls still outstanding past that); foreign
exception (anything not a ``SnakepitError``); or a ``SnakepitError`` by ``(category, reason)``,
timeouts also by ``details["stage"]`` (``queued``: no worker was assigned before the deadline;
``running``: it timed out on a worker; each ``running`` one is listed with its tool, timeout,
elapsed time and worker id).

Resources of this (the owner) process: open fds, threads (``threading.active_count()`` and the
kernel's count), child processes and RSS, at the baseline (after one warm-up pool has been
served, called over gRPC and closed), at the start and the end of the load, and after every
server, client and pool is closed -- without ``gc.collect()``: ``close()`` must release it all by
itself. Pass: no hang, no wrong result, no foreign exception; fds, threads and processes after
close equal to the baseline; RSS growth from the first minute to the end under 10% (judged on
runs over 2 minutes).

Run: ``python -m benchmarks soak [--minutes N | --seconds N] [--quick] [--seed S] [--json out.json]``
(also ``python -m benchmarks.soak ...``). ``--quick`` is a 15 s run. Not part of the default list of
``python -m benchmarks``: name it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import logging
import os
import random
import signal
import statistics
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from snakepit import HALT, Pool, SnakepitError
from snakepit.grpc import Client

from ._harness import common_options, emit_json
from ._soak_adapters import SoakAdapter, ThreadedSoakAdapter

# -- the load's settings ---------------------------------------------------------------------------

QUEUE_TIMEOUT = 3.0  # every pool's queue_timeout
POOL_TIMEOUT = 5.0  # the pools' default call timeout (calls pass their own)
CALL_TIMEOUT = (3.0, 5.0)  # each call's timeout, drawn from this range
MAP_TIMEOUT = 4.0  # a map's timeout, which bounds each batch
# A map has no single deadline (its timeout bounds each batch, from when it runs): its budget is
# one batch's timeout plus one wait in the queue, and it hangs past twice that.
MAP_BUDGET = MAP_TIMEOUT + QUEUE_TIMEOUT
KILL_EVERY = (1.5, 4.0)  # seconds between two kills
WORKER_NAME = "snakepit-worker"  # what the killer may signal (and only among this process's descendants)
LONG_STREAM = {"n": 40, "delay": 0.025}  # 1 s: long enough to be killed mid-way

THREADS = {  # load threads per kind (the asyncio thread runs lanes instead)
    "execute": 3,
    "stream": 2,
    "map": 2,
    "session_strict": 2,
    "session_hint": 2,
    "grpc": 2,
    "grpc_session": 2,
}
ASYNC_LANES = {"async": 4, "grpc_async": 3}  # concurrent coroutines on the asyncio thread
KINDS = [*THREADS, *ASYNC_LANES]

KEEP = 20  # examples kept per anomaly list (counts are always complete)
EXPECTED_REASONS = {  # what a soak with SIGKILLs and short timeouts may legitimately see
    "worker/worker_crashed",
    "pool/session_worker_unavailable",
    "timeout/timeout",
    "timeout/queue_timeout",
}


# -- the process's resources -----------------------------------------------------------------------


def _native_threads() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def _fd_table() -> dict[int, str]:
    table = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return table


def _fd_kind(target: str) -> str:
    if target.startswith("anon_inode:"):
        return target[len("anon_inode:") :].strip("[]")
    if target.startswith("/memfd:"):
        return "memfd"
    if ":" in target and not target.startswith("/"):
        return target.split(":", 1)[0]  # pipe, socket
    return "file"


def _thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:
            continue
    return sorted(names)


def resources() -> dict[str, Any]:
    me = psutil.Process()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "native_threads": _native_threads(),
        "processes": len(me.children(recursive=True)),
        "rss_mb": round(me.memory_info().rss / 2**20, 2),
    }


# -- values and checks -----------------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyzAZ09 _-éßλ中🙂"


def nested(rng: random.Random, exact_json: bool, depth: int = 0) -> Any:
    """A random value; ``exact_json``: only what JSON carries exactly (what a Client sends as is)."""
    if depth < 3 and rng.random() < 0.45:
        if rng.random() < 0.5:
            return {
                "".join(rng.choices(_LETTERS, k=rng.randint(1, 6))): nested(rng, exact_json, depth + 1)
                for _ in range(rng.randint(0, 4))
            }
        items = [nested(rng, exact_json, depth + 1) for _ in range(rng.randint(0, 4))]
        return tuple(items) if not exact_json and rng.random() < 0.3 else items
    leaf = rng.randrange(7 if exact_json else 8)
    if leaf == 0:
        return rng.randint(-(2**50), 2**50)
    if leaf == 1:
        return rng.uniform(-1e6, 1e6)
    if leaf == 2:
        return "".join(rng.choices(_LETTERS, k=rng.randint(0, 12)))
    if leaf == 3:
        return rng.random() < 0.5
    if leaf == 4:
        return None
    if leaf == 5:
        return rng.randint(0, 255)
    if leaf == 6:
        return [rng.randint(0, 9) for _ in range(rng.randint(0, 5))]
    return rng.randbytes(rng.randint(0, 16))


def same(a: Any, b: Any) -> bool:
    """Equal, types included, all the way down (``1 == 1.0 == True`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def _counting(got: list) -> bool:
    return all(type(x) is int and x == i for i, x in enumerate(got))


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- the record of every call ----------------------------------------------------------------------


class Call:
    """One call being made: what, where, its budget (hang past twice that), how it went."""

    __slots__ = ("budget", "elapsed", "flagged", "kind", "op", "outcome", "pool", "started", "task", "thread", "timeout")

    def __init__(self, kind: str, op: str, pool: str, budget: float, timeout: float | None) -> None:
        self.kind, self.op, self.pool, self.budget, self.timeout = kind, op, pool, budget, timeout
        self.started = time.monotonic()
        self.thread = threading.get_ident()
        try:  # a call made by a coroutine: its task's stack says where it waits
            self.task: asyncio.Task | None = asyncio.current_task()
        except RuntimeError:
            self.task = None
        self.outcome = "ok"
        self.flagged: dict | None = None  # the watchdog's report, once it made one
        self.elapsed = 0.0

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "op": self.op, "pool": self.pool, "timeout": self.timeout, "budget_s": self.budget}


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.ops: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.errors_by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.errors_by_op: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.timeouts: collections.Counter[str] = collections.Counter()
        self.crash_causes: collections.Counter[str] = collections.Counter()
        self.map_items: collections.Counter[str] = collections.Counter()
        self.running_timeouts: list[dict] = []
        self.running_timeout_count = 0
        self.unexpected: list[dict] = []
        self.wrong: list[dict] = []
        self.wrong_count = 0
        self.foreign: list[dict] = []
        self.foreign_count = 0
        self.foreign_types: collections.Counter[str] = collections.Counter()
        self.hangs: list[dict] = []
        self.hang_count = 0
        self.max_ratio: dict[str, float] = {}  # per kind: the slowest call's elapsed / budget
        self.inflight: dict[int, Call] = {}
        self._ids = itertools.count()
        self.rescuing = False  # the end: the asyncio thread's hung calls are being cancelled

    @contextlib.contextmanager
    def call(self, kind: str, op: str, pool: str, timeout: float | None, *, budget: float | None = None) -> Iterator[Call]:
        call = Call(kind, op, pool, budget if budget is not None else timeout, timeout)  # type: ignore[arg-type]
        key = next(self._ids)
        with self.lock:
            self.inflight[key] = call
        try:
            yield call
        except SnakepitError as error:
            self.snakepit_error(call, error)
        except Exception as exc:
            self._foreign(call, exc)
        except asyncio.CancelledError as exc:  # the soak's own cancels are caught where they are made...
            if self.rescuing:  # ...but for the end of a hung asyncio thread's calls (they count as hangs)
                call.outcome = "cancelled after hanging"
            else:
                self._foreign(call, exc)
            raise
        finally:
            call.elapsed = time.monotonic() - call.started
            with self.lock:
                self.inflight.pop(key, None)
                self.calls[kind] += 1
                self.ops[f"{kind}.{op}"] += 1
                self.outcomes[call.outcome] += 1
                ratio = call.elapsed / call.budget
                if ratio > self.max_ratio.get(kind, 0.0):
                    self.max_ratio[kind] = round(ratio, 3)
                if call.elapsed > 2 * call.budget:
                    self.hang_count += 1
                    if call.flagged is not None:
                        call.flagged.update(returned_after_s=round(call.elapsed, 3), outcome=call.outcome)
                    elif len(self.hangs) < KEEP:
                        self.hangs.append(
                            {**call.describe(), "returned_after_s": round(call.elapsed, 3), "outcome": call.outcome}
                        )

    def expect(self, call: Call, ok: bool, what: Callable[[], str]) -> None:
        """A result check: ``what()`` says what was wrong."""
        if ok or call.outcome == "wrong":  # a call is one wrong result, however many checks it fails
            return
        call.outcome = "wrong"
        with self.lock:
            self.wrong_count += 1
            if len(self.wrong) < KEEP:
                self.wrong.append({**call.describe(), "what": what()})

    def snakepit_error(self, call: Call, error: SnakepitError, *, item: bool = False) -> None:
        """A ``SnakepitError``: the call's outcome (or, ``item``, one map item's)."""
        key = f"{error.category}/{error.reason}"
        details = error.details or {}
        elapsed = time.monotonic() - call.started
        with self.lock:
            if item:
                self.map_items[key] += 1
            else:
                call.outcome = "error"
                self.errors[key] += 1
                self.errors_by_kind[call.kind][key] += 1
                self.errors_by_op[f"{call.kind}.{call.op}"][key] += 1
            if error.reason in ("timeout", "queue_timeout"):
                stage = details.get("stage")
                if stage is None:  # no stage: the Client's own gRPC deadline, not the pool's answer
                    stage = "none (client deadline)" if call.pool.endswith("grpc") else "none"
                self.timeouts[f"{error.reason}/{stage}"] += 1
                if stage == "running":
                    self.running_timeout_count += 1
                    if len(self.running_timeouts) < 50:
                        self.running_timeouts.append(
                            {
                                **call.describe(),
                                "tool": details.get("tool"),
                                "elapsed_s": round(elapsed, 3),
                                "worker_id": details.get("worker_id"),
                                "map_item": item,
                                "correlation_id": details.get("correlation_id"),
                                "message": error.message,
                            }
                        )
            if error.reason == "worker_crashed":
                cause = details.get("signal") or f"exit_code={details.get('exit_code')}"
                self.crash_causes[str(cause)] += 1
            if key not in EXPECTED_REASONS and len(self.unexpected) < KEEP:
                self.unexpected.append(
                    {**call.describe(), "error": key, "message": error.message, "details": _short(details, 400)}
                )

    def _foreign(self, call: Call, exc: BaseException) -> None:
        call.outcome = "foreign"
        with self.lock:
            self.foreign_count += 1
            self.foreign_types[type(exc).__qualname__] += 1
            if len(self.foreign) < KEEP:
                self.foreign.append(
                    {
                        **call.describe(),
                        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                        "message": _short(str(exc), 400),
                        "traceback": "".join(traceback.format_exception(exc)),
                    }
                )

    def foreign_outside(self, where: str, exc: BaseException) -> None:
        """A foreign exception outside any call (a load thread's own bookkeeping)."""
        with self.lock:
            self.foreign_count += 1
            self.foreign_types[type(exc).__qualname__] += 1
            if len(self.foreign) < KEEP:
                self.foreign.append(
                    {"where": where, "type": type(exc).__qualname__, "traceback": "".join(traceback.format_exception(exc))}
                )

    def watch(self) -> list[dict]:
        """Calls outstanding past twice their budget, not reported yet (the watchdog's round)."""
        now = time.monotonic()
        fresh = []
        with self.lock:
            late = [c for c in self.inflight.values() if c.flagged is None and now - c.started > 2 * c.budget]
        frames = sys._current_frames() if late else {}
        for call in late:
            frame = frames.get(call.thread)
            stack = "".join(traceback.format_stack(frame)[-12:]) if frame is not None else ""
            if call.task is not None:  # the coroutine's own stack, not its loop's
                with contextlib.suppress(Exception):
                    stack = _await_chain(call.task)
            report = {
                **call.describe(),
                "outstanding_s": round(now - call.started, 3),
                "returned_after_s": None,
                "stack": stack or None,
            }
            call.flagged = report
            fresh.append(report)
            with self.lock:
                if len(self.hangs) < KEEP:
                    self.hangs.append(report)
        return fresh

    def total_hangs(self) -> tuple[int, int]:
        """Hangs: calls that returned late, and calls still outstanding past twice their budget."""
        now = time.monotonic()
        with self.lock:
            outstanding = sum(1 for c in self.inflight.values() if now - c.started > 2 * c.budget)
            return self.hang_count + outstanding, outstanding


def _await_chain(task: asyncio.Task) -> str:
    """Where a pending task waits: each coroutine and async generator it awaits, innermost last
    (``Task.print_stack`` shows only the outermost frame of a suspended coroutine)."""
    lines = []
    awaited: Any = task.get_coro()
    for _ in range(40):
        if awaited is None:
            break
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        inner = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None) or getattr(awaited, "gi_yieldfrom", None)
        if inner is None and type(awaited).__name__ in ("async_generator_asend", "async_generator_athrow"):
            # ``async for`` awaits an asend object: the generator it drives is among its referents
            inner = next((r for r in gc.get_referents(awaited) if isinstance(r, types.AsyncGeneratorType)), None)
        if inner is None:
            lines.append(f"  awaiting {awaited!r}")
        awaited = inner
    return "\n".join(lines) + "\n"


# -- the pools under load --------------------------------------------------------------------------


class Target:
    """A pool, its gRPC server and Clients of it."""

    def __init__(self, name: str, pool: Pool, clients: int) -> None:
        self.name = name
        self.pool = pool
        self.server = pool.serve("127.0.0.1:0")
        self.clients = [Client(self.server.address) for _ in range(clients)]

    def client(self, rng: random.Random) -> Client:
        return rng.choice(self.clients)


class Events:
    """``on_event`` of each pool: events counted by name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def listener(self, pool: str) -> Callable[[dict], None]:
        def on_event(event: dict) -> None:
            with self.lock:
                self.counts[pool][event.get("event", "?")] += 1

        return on_event


class LogCount(logging.Handler):
    """The ``snakepit`` logger's records, counted instead of printed (a kill every two seconds
    logs a worker's exit and restart every two seconds); the first few ERRORs kept."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < KEEP:
            self.errors.append(f"{record.name}: {record.getMessage()}"[:500])


def _timeout(rng: random.Random) -> float:
    return round(rng.uniform(*CALL_TIMEOUT), 3)


def _check_stream(rec: Recorder, call: Call, got: list, n: int | None, result: Any = None, final: bool = False) -> None:
    """``got`` is ``0..k-1`` in order (a prefix, if the stream failed or was left); with ``n``,
    complete, and the result says so."""
    rec.expect(call, _counting(got), lambda: f"chunks are not 0..k-1 in order: {_short(got)}")
    if n is not None:
        rec.expect(call, len(got) == n, lambda: f"{len(got)} chunks, {n} expected: {_short(got)}")
        if result is not None:
            rec.expect(
                call,
                result.chunks == n and result.synthetic_final is (not final) and not result.halted,
                lambda: f"stream result {result!r} after {n} chunks (final chunk from the tool: {final})",
            )


def _stream_args(rng: random.Random) -> tuple[dict, str]:
    if rng.random() < 0.05:
        return dict(LONG_STREAM, final=rng.random() < 0.5), "long"
    args = {"n": rng.randint(1, 60), "final": rng.random() < 0.3}
    if rng.random() < 0.2:
        args["delay"] = rng.choice((0.0005, 0.001, 0.002))
    return args, "short"


def _execute_once(rec: Recorder, kind: str, caller: Any, pool: str, rng: random.Random, exact_json: bool) -> None:
    """One ``execute`` of a small tool on a pool or a Client, its result checked."""
    timeout = _timeout(rng)
    roll = rng.random()
    if roll < 0.4:
        a, b = rng.randint(-(2**40), 2**40), rng.randint(-(2**40), 2**40)
        with rec.call(kind, "add", pool, timeout) as call:
            got = caller.execute("add", {"a": a, "b": b}, timeout=timeout)
            rec.expect(call, type(got) is int and got == a + b, lambda: f"add({a}, {b}) returned {got!r}")
    elif roll < 0.75:
        value = nested(rng, exact_json)
        with rec.call(kind, "echo", pool, timeout) as call:
            got = caller.execute("echo", {"value": value}, timeout=timeout)
            rec.expect(call, same(got, value), lambda: f"echo of {_short(value)} returned {_short(got)}")
    else:
        ms = rng.uniform(10, 50) if roll > 0.9 else rng.uniform(0.2, 3)
        token = rng.getrandbits(48)
        with rec.call(kind, "nap", pool, timeout) as call:
            got = caller.execute("nap", {"ms": ms, "token": token}, timeout=timeout)
            rec.expect(call, got == token, lambda: f"nap answered {got!r}, its token was {token}")


def _stream_once(rec: Recorder, kind: str, caller: Any, pool: str, rng: random.Random) -> None:
    """One stream of ``count`` on a pool or a Client: iterated (maybe left early), or through a
    callback (maybe halted)."""
    timeout = _timeout(rng)
    args, length = _stream_args(rng)
    n, final = args["n"], args["final"]
    if rng.random() < 0.55:
        leave_at = rng.randint(1, n) if rng.random() < 0.25 else None
        op = f"stream_{length}" + ("_break" if leave_at else "")
        got: list = []
        with rec.call(kind, op, pool, timeout) as call:
            try:
                with caller.stream("count", args, timeout=timeout) as stream:
                    for value in stream:
                        got.append(value)
                        if leave_at is not None and len(got) >= leave_at:
                            break
                    if leave_at is None:
                        _check_stream(rec, call, got, n, stream.result, final)
                    else:
                        call.outcome = "left early"
            finally:
                _check_stream(rec, call, got, None)
    else:
        halt_at = rng.randint(1, n) if rng.random() < 0.25 else None
        op = f"execute_stream_{length}" + ("_halt" if halt_at else "")
        got = []

        def on_chunk(value: Any) -> Any:
            got.append(value)
            return HALT if halt_at is not None and len(got) >= halt_at else None

        with rec.call(kind, op, pool, timeout) as call:
            try:
                result = caller.execute_stream("count", args, on_chunk, timeout=timeout)
                if halt_at is None:
                    _check_stream(rec, call, got, n, result, final)
                else:
                    call.outcome = "left early"
                    # HALT on the tool's own final chunk: the stream had ended anyway (a Client says
                    # halted=False there, a Pool halted=True; either is accepted).
                    ended = halt_at == n and final
                    rec.expect(
                        call,
                        (result.halted or ended) and result.chunks == len(got) == halt_at,
                        lambda: f"halted at {halt_at} of {n}: {result!r}, got {got}",
                    )
            finally:
                _check_stream(rec, call, got, None)


def _check_map(rec: Recorder, call: Call, xs: list[int], results: list, ordered: bool) -> None:
    failed = 0
    for result in results:
        if isinstance(result, SnakepitError):
            failed += 1
            rec.snakepit_error(call, result, item=True)
        elif isinstance(result, BaseException):
            rec._foreign(call, result)
    ok = [r for r in results if not isinstance(r, BaseException)]
    with rec.lock:
        rec.map_items["ok"] += len(ok)
    rec.expect(call, len(results) == len(xs), lambda: f"{len(results)} results for {len(xs)} items")
    bad = [r for r in ok if not (isinstance(r, list) and len(r) == 2 and type(r[0]) is int and r[1] == r[0] * r[0])]
    rec.expect(call, not bad, lambda: f"results that are no [x, x*x]: {_short(bad)}")
    if ordered:
        wrong = [
            (i, r)
            for i, r in enumerate(results)
            if not isinstance(r, BaseException) and not (i < len(xs) and isinstance(r, list) and r and r[0] == xs[i])
        ]
        rec.expect(call, not wrong, lambda: f"results out of place: {_short(wrong)}")
    else:
        extra = collections.Counter(r[0] for r in ok if isinstance(r, list) and r) - collections.Counter(xs)
        rec.expect(call, not extra, lambda: f"results for items never sent (or twice): {_short(dict(extra))}")
    if failed and call.outcome == "ok":
        call.outcome = "item errors"


def _map_args(rng: random.Random) -> tuple[str, list[int], bool, int | None]:
    tool = "square_idempotent" if rng.random() < 0.5 else "square"
    xs = [rng.getrandbits(31) for _ in range(rng.randint(200, 400))]
    chunksize = rng.randint(1, 64) if rng.random() < 0.3 else None
    return tool, xs, rng.random() < 0.7, chunksize


# -- load threads ----------------------------------------------------------------------------------


def execute_load(rec: Recorder, targets: list[Target], rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        target = rng.choice(targets)
        _execute_once(rec, "execute", target.pool, target.name, rng, exact_json=False)


def stream_load(rec: Recorder, targets: list[Target], rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        target = rng.choice(targets)
        _stream_once(rec, "stream", target.pool, target.name, rng)


def map_load(rec: Recorder, targets: list[Target], rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        target = rng.choice(targets)
        tool, xs, ordered, chunksize = _map_args(rng)
        op = f"{tool}{'' if ordered else '_unordered'}"
        with rec.call("map", op, target.name, MAP_TIMEOUT, budget=MAP_BUDGET) as call:
            results = list(
                target.pool.map(
                    tool,
                    ({"x": x} for x in xs),
                    ordered=ordered,
                    return_exceptions=True,
                    chunksize=chunksize,
                    timeout=MAP_TIMEOUT,
                )
            )
            _check_map(rec, call, xs, results, ordered)


class SessionCheck:
    """What a session's counters must do.

    strict: one worker process, and 1, 2, 3...; hint: on each worker, one more than last time.
    ``slack`` counts the calls that may have run without their answer reaching us (a timeout
    on the worker, a deadline of the Client's own), each of which may have counted one more.
    """

    def __init__(self, strict: bool, session_id: str) -> None:
        self.strict = strict
        self.id = session_id
        self.worker: str | None = None
        self.last: dict[str, int] = {}
        self.slack = 0

    def check(self, rec: Recorder, call: Call, got: Any) -> None:
        if not (
            isinstance(got, dict)
            and got.get("session") == self.id
            and type(got.get("n")) is int
            and isinstance(got.get("worker"), str)
        ):
            rec.expect(call, False, lambda: f"tick of session {self.id} returned {_short(got)}")
            return
        worker, n = got["worker"], got["n"]
        if self.strict and self.worker is not None:
            rec.expect(call, worker == self.worker, lambda: f"strict session {self.id} ran on {worker}, pinned to {self.worker}")
        previous = self.last.get(worker, 0)
        rec.expect(
            call,
            previous < n <= previous + 1 + self.slack,
            lambda: f"session {self.id} counter {n} on {worker} after {previous} (slack {self.slack}, strict {self.strict})",
        )
        self.worker = self.worker or worker
        self.last[worker] = n

    def failed(self, error: SnakepitError, ticked: bool = True) -> bool:
        """After a failed call (``ticked``: of ``tick``): True if the session must start afresh."""
        if error.reason in ("worker_crashed", "session_worker_unavailable"):
            return self.strict  # its worker is gone, and its counter with it
        stage = (error.details or {}).get("stage")
        if ticked and not (error.reason in ("timeout", "queue_timeout") and stage == "queued"):
            self.slack += 1  # it may have counted on a worker without our hearing of it
        return False


def session_load(
    rec: Recorder,
    targets: list[Target],
    rng: random.Random,
    stop: threading.Event,
    kind: str,
    remote: bool,
) -> None:
    while not stop.is_set():
        target = rng.choice(targets)
        strict = kind == "session_strict" or (kind == "grpc_session" and rng.random() < 0.5)
        mode = "strict_queue" if strict else "hint"
        session_id = f"{kind}-{threading.get_ident()}-{rng.getrandbits(40):x}"
        check = SessionCheck(strict, session_id)
        where = f"{target.name}{' grpc' if remote else ''}"
        caller = target.client(rng) if remote else target.pool
        session = None
        with rec.call(kind, f"open_{mode}", where, QUEUE_TIMEOUT):
            session = caller.session(session_id, affinity=mode)
        if session is None:
            continue
        calls = rng.randint(20, 200)
        restart = False
        while not stop.is_set() and calls > 0 and not restart:
            calls -= 1
            timeout = _timeout(rng)
            if rng.random() < 0.1:  # a stream through the session: it obeys the same affinity
                n = rng.randint(1, 20)
                got: list = []
                with rec.call(kind, f"stream_{mode}", where, timeout) as call:
                    try:
                        for value in session.stream("count", {"n": n}, timeout=timeout):
                            got.append(value)
                        _check_stream(rec, call, got, n)
                    except SnakepitError as error:
                        restart = check.failed(error, ticked=False)
                        raise
                    finally:
                        _check_stream(rec, call, got, None)
                continue
            with rec.call(kind, f"tick_{mode}", where, timeout) as call:
                try:
                    got = session.execute("tick", {"session": session_id}, timeout=timeout)
                except SnakepitError as error:
                    restart = check.failed(error)
                    raise
                check.check(rec, call, got)
        with rec.call(kind, "close", where, QUEUE_TIMEOUT):
            session.close()


def grpc_load(rec: Recorder, targets: list[Target], rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        target = rng.choice(targets)
        client = target.client(rng)
        if rng.random() < 0.6:
            _execute_once(rec, "grpc", client, f"{target.name} grpc", rng, exact_json=True)
        else:
            _stream_once(rec, "grpc", client, f"{target.name} grpc", rng)


# -- the asyncio thread ----------------------------------------------------------------------------


async def _cancelled_soon(rec: Recorder, call: Call, awaitable: Any, after: float, check: Callable[[Any], None]) -> None:
    """Run ``awaitable`` as a task and cancel it after ``after`` s; if it finished first, check it."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=after)
    if not done:
        task.cancel()
    try:
        result = await task
    except asyncio.CancelledError:
        if done:  # we never cancelled it: something else did
            raise RuntimeError("a call's task was cancelled, but not by its caller") from None
        call.outcome = "cancelled"
        return
    check(result)


async def _astream_once(rec: Recorder, kind: str, caller: Any, where: str, rng: random.Random, timeout: float) -> None:
    """An ``astream`` of ``count`` (a pool's or a Client's: the same call), sometimes left early."""
    args, length = _stream_args(rng)
    n = args["n"]
    leave_at = rng.randint(1, n) if rng.random() < 0.25 else None
    got: list = []
    with rec.call(kind, f"astream_{length}" + ("_break" if leave_at else ""), where, timeout) as call:
        try:
            async with caller.astream("count", args, timeout=timeout) as stream:
                async for value in stream:
                    got.append(value)
                    if leave_at is not None and len(got) >= leave_at:
                        break
                if leave_at is None:
                    _check_stream(rec, call, got, n, stream.result, args["final"])
                else:
                    call.outcome = "left early"
        finally:
            _check_stream(rec, call, got, None)


async def async_pool_op(rec: Recorder, targets: list[Target], rng: random.Random) -> None:
    target = rng.choice(targets)
    pool, where = target.pool, target.name
    timeout = _timeout(rng)
    roll = rng.random()
    if roll < 0.3:
        a, b = rng.randint(-(2**40), 2**40), rng.randint(-(2**40), 2**40)
        with rec.call("async", "aexecute", where, timeout) as call:
            got = await pool.aexecute("add", {"a": a, "b": b}, timeout=timeout)
            rec.expect(call, got == a + b, lambda: f"aexecute add({a}, {b}) returned {got!r}")
    elif roll < 0.55:
        await _astream_once(rec, "async", pool, where, rng, timeout)
    elif roll < 0.7:
        tool, xs, ordered, chunksize = _map_args(rng)
        xs = xs[: rng.randint(100, 300)]
        with rec.call("async", f"amap_{tool}{'' if ordered else '_unordered'}", where, MAP_TIMEOUT, budget=MAP_BUDGET) as call:
            results = [
                r
                async for r in pool.amap(
                    tool,
                    ({"x": x} for x in xs),
                    ordered=ordered,
                    return_exceptions=True,
                    chunksize=chunksize,
                    timeout=MAP_TIMEOUT,
                )
            ]
            _check_map(rec, call, xs, results, ordered)
    elif roll < 0.85:
        token = rng.getrandbits(48)
        with rec.call("async", "aexecute_cancelled", where, timeout) as call:
            await _cancelled_soon(
                rec,
                call,
                pool.aexecute("nap", {"ms": rng.uniform(10, 50), "token": token}, timeout=timeout),
                rng.uniform(0, 0.04),
                lambda got: rec.expect(call, got == token, lambda: f"nap answered {got!r}, its token was {token}"),
            )
    else:
        got = []

        async def consume() -> list:
            async for value in pool.astream("count", LONG_STREAM, timeout=timeout):
                got.append(value)
            return got

        with rec.call("async", "astream_cancelled", where, timeout) as call:
            try:
                await _cancelled_soon(
                    rec,
                    call,
                    consume(),
                    rng.uniform(0.01, 0.3),
                    lambda result: _check_stream(rec, call, result, LONG_STREAM["n"]),
                )
            finally:
                _check_stream(rec, call, got, None)


async def async_client_op(rec: Recorder, targets: list[Target], rng: random.Random) -> None:
    target = rng.choice(targets)
    client, where = target.client(rng), f"{target.name} grpc"
    timeout = _timeout(rng)
    roll = rng.random()
    if roll < 0.45:
        value = nested(rng, exact_json=True)
        with rec.call("grpc_async", "aexecute", where, timeout) as call:
            got = await client.aexecute("echo", {"value": value}, timeout=timeout)
            rec.expect(call, same(got, value), lambda: f"aexecute echo of {_short(value)} returned {_short(got)}")
    elif roll < 0.85:
        await _astream_once(rec, "grpc_async", client, where, rng, timeout)
    else:
        token = rng.getrandbits(48)
        with rec.call("grpc_async", "aexecute_cancelled", where, timeout) as call:
            await _cancelled_soon(
                rec,
                call,
                client.aexecute("nap", {"ms": rng.uniform(10, 50), "token": token}, timeout=timeout),
                rng.uniform(0, 0.04),
                lambda got: rec.expect(call, got == token, lambda: f"nap answered {got!r}, its token was {token}"),
            )


def async_load(rec: Recorder, targets: list[Target], seed: int, stop: threading.Event, loops: list) -> None:
    async def lane(op: Callable[..., Any], rng: random.Random) -> None:
        while not stop.is_set():
            await op(rec, targets, rng)

    async def main() -> None:
        loops.append(asyncio.get_running_loop())  # for rescue(), should a call of ours hang
        lanes = []
        for n, (kind, count) in enumerate(ASYNC_LANES.items()):
            op = async_pool_op if kind == "async" else async_client_op
            lanes += [lane(op, random.Random(seed * 1000 + n * 100 + i)) for i in range(count)]
        await asyncio.gather(*lanes)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        if not rec.rescuing:
            raise


def rescue(rec: Recorder, loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task of the asyncio thread's loop: its hung calls (already counted as hangs
    by then) end, so that the thread and its loop's fds do not outlive the soak and blur what
    ``close()`` releases."""
    rec.rescuing = True

    def cancel_all() -> None:
        for task in asyncio.all_tasks(loop):
            task.cancel()

    with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
        loop.call_soon_threadsafe(cancel_all)


# -- the killer, the watchdog, the sampler ---------------------------------------------------------


class Killer:
    def __init__(self, targets: list[Target], rng: random.Random, stop: threading.Event) -> None:
        self.targets, self.rng, self.stop = targets, rng, stop
        self.kills: collections.Counter[str] = collections.Counter()
        self.by_state: collections.Counter[str] = collections.Counter()
        self.skipped = 0

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(self.rng.uniform(*KILL_EVERY)):
            target = self.rng.choice(self.targets)
            workers = [w for w in target.pool.stats()["worker_info"] if w.get("pid")]
            if not workers:
                self.skipped += 1
                continue
            worker = self.rng.choice(workers)
            try:
                handle = os.pidfd_open(worker["pid"])
            except ProcessLookupError:
                self.skipped += 1
                continue
            try:
                # The pid, now held by the pidfd, must be a worker among this process's
                # descendants: never signal anything else (a pid reused by another process).
                if (
                    worker["pid"] not in {p.pid for p in me.children(recursive=True)}
                    or psutil.Process(worker["pid"]).name() != WORKER_NAME
                ):
                    self.skipped += 1
                    continue
                signal.pidfd_send_signal(handle, signal.SIGKILL)
                self.kills[target.name] += 1
                self.by_state[str(worker.get("state"))] += 1
            except (ProcessLookupError, psutil.NoSuchProcess):
                self.skipped += 1
            finally:
                os.close(handle)


def watchdog(rec: Recorder, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        for report in rec.watch():
            print(
                f"\nHANG? {report['kind']}.{report['op']} on {report['pool']} outstanding {report['outstanding_s']} s "
                f"(budget {report['budget_s']} s)\n{report['stack'] or ''}",
                file=sys.stderr,
                flush=True,
            )


def sampler(
    rec: Recorder, killer: Killer, started: float, samples: list, stop: threading.Event, every: float, report: float | None
) -> None:
    me = psutil.Process()
    next_report = report
    while not stop.wait(every):
        elapsed = time.monotonic() - started
        samples.append(
            {
                "t_s": round(elapsed, 1),
                "rss_mb": round(me.memory_info().rss / 2**20, 2),
                "fds": len(os.listdir("/proc/self/fd")),
                "native_threads": _native_threads(),
            }
        )
        if next_report is not None and elapsed >= next_report:
            next_report += report
            with rec.lock:
                total, errors = sum(rec.calls.values()), sum(rec.errors.values())
            print(
                f"  t={elapsed:5.0f}s calls={total} errors={errors} kills={sum(killer.kills.values())} "
                f"hangs={rec.hang_count} wrong={rec.wrong_count} foreign={rec.foreign_count} rss={samples[-1]['rss_mb']} MB",
                flush=True,
            )


# -- the run ---------------------------------------------------------------------------------------


def warm_up() -> None:
    """What stays for the life of the process once a pool has been served and called over gRPC
    (the one gRPC event-loop thread, grpc's own threads and poller): in the baseline."""
    with Pool(SoakAdapter, size=1) as pool:
        server = pool.serve("127.0.0.1:0")
        with Client(server.address) as client:
            assert client.execute("add", {"a": 1, "b": 2}) == 3
        server.stop()


_COUNTED = ("fds", "threads", "native_threads", "processes")


def steady(quiet_s: float = 1.0, deadline_s: float = 15.0) -> dict:
    """Resources once fds, threads and processes have not changed for ``quiet_s`` (at most
    ``deadline_s``): the baseline. grpc's own threads come and go after a call for a while
    (its EventEngine's pool grows, then its lifeguard ends idle threads): a baseline taken in
    the middle of that would count one of them, or not, by chance."""
    started = last_change = time.monotonic()
    now = resources()
    while True:
        time.sleep(0.05)
        sample = resources()
        if any(sample[key] != now[key] for key in _COUNTED):
            last_change = time.monotonic()
        now = sample
        if time.monotonic() - last_change >= quiet_s or time.monotonic() - started > deadline_s:
            return now


def settle(baseline: dict, deadline_s: float = 15.0) -> tuple[dict, float]:
    """Resources after close, polled until threads, processes and fds are back at the baseline
    (or ``deadline_s`` passed): what close() leaves behind, not what it is still finishing."""
    started = time.monotonic()
    while True:
        now = resources()
        if all(now[key] == baseline[key] for key in _COUNTED):
            break
        if time.monotonic() - started > deadline_s:
            break
        time.sleep(0.05)
    return now, round(time.monotonic() - started, 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long the load runs (default 5)")
    length.add_argument("--seconds", type=float, help="how long the load runs, in seconds")
    parser.add_argument("--seed", type=int, default=None, help="seed of the load's random choices")
    common_options(parser)
    opts = parser.parse_args(argv)
    duration = (
        opts.seconds
        if opts.seconds is not None
        else 60 * opts.minutes
        if opts.minutes is not None
        else 15.0
        if opts.quick
        else 300.0
    )
    if not duration > 0:
        parser.error("the duration must be positive")
    seed = opts.seed if opts.seed is not None else random.SystemRandom().getrandbits(32)

    log = logging.getLogger("snakepit")
    counted = LogCount()
    saved = (log.level, log.propagate)
    log.addHandler(counted)
    log.propagate = False
    try:
        payload = _soak(duration, seed)
    finally:
        log.removeHandler(counted)
        log.setLevel(saved[0])
        log.propagate = saved[1]
    payload["log_records"] = dict(counted.counts)
    payload["log_errors"] = counted.errors
    _print(payload)
    emit_json(opts.json, payload)
    return payload


def _soak(duration: float, seed: int) -> dict[str, Any]:
    print(f"\nsoak: {duration:g} s of mixed load with random SIGKILLs (seed {seed})", flush=True)
    rec = Recorder()
    events = Events()
    before_warm_up = resources()
    warm_up()
    baseline = steady()
    baseline_fds = _fd_table()
    baseline_threads = _thread_names()
    baseline_python_threads = sorted(t.name for t in threading.enumerate())

    pools = [
        (
            "single",
            Pool(SoakAdapter, size=3, timeout=POOL_TIMEOUT, queue_timeout=QUEUE_TIMEOUT, on_event=events.listener("single")),
        ),
        (
            "threaded",
            Pool(
                ThreadedSoakAdapter,
                size=2,
                threads_per_worker=4,
                timeout=POOL_TIMEOUT,
                queue_timeout=QUEUE_TIMEOUT,
                on_event=events.listener("threaded"),
            ),
        ),
    ]
    targets: list[Target] = []
    try:
        for _, pool in pools:
            pool.start()
        targets = [Target(name, pool, clients=2) for name, pool in pools]
        at_start = resources()

        stop = threading.Event()  # the load's
        stop_aux = threading.Event()  # the killer's, the watchdog's and the sampler's
        load: list[threading.Thread] = []
        loaders: dict[str, Callable[..., None]] = {
            "execute": execute_load,
            "stream": stream_load,
            "map": map_load,
            "grpc": grpc_load,
        }
        n = 0
        for kind, count in THREADS.items():
            for i in range(count):
                rng = random.Random(seed * 1000 + n)
                n += 1
                if kind.startswith("session") or kind == "grpc_session":
                    target_fn: Callable[..., None] = session_load
                    args: tuple = (rec, targets, rng, stop, kind, kind == "grpc_session")
                else:
                    target_fn, args = loaders[kind], (rec, targets, rng, stop)
                load.append(
                    threading.Thread(
                        target=_guarded, args=(rec, f"{kind}-{i}", target_fn, args), name=f"soak-{kind}-{i}", daemon=True
                    )
                )
        loops: list[asyncio.AbstractEventLoop] = []
        asyncio_thread = threading.Thread(
            target=_guarded,
            args=(rec, "asyncio", async_load, (rec, targets, seed, stop, loops)),
            name="soak-asyncio",
            daemon=True,
        )
        load.append(asyncio_thread)
        killer = Killer(targets, random.Random(seed ^ 0x5EED), stop)
        samples: list[dict] = []
        started = time.monotonic()
        aux = [
            threading.Thread(target=killer.run, name="soak-killer", daemon=True),
            threading.Thread(target=watchdog, args=(rec, stop_aux), name="soak-watchdog", daemon=True),
            threading.Thread(
                target=sampler,
                args=(rec, killer, started, samples, stop_aux, 2.0, 30.0 if duration >= 60 else None),
                name="soak-sampler",
                daemon=True,
            ),
        ]
        for thread in load + aux:
            thread.start()
        stop.wait(duration)  # the main thread only waits: the load runs on its own threads

        stop.set()  # every load thread finishes the call it is making, then ends (the killer too)
        load_stopped = time.monotonic()
        limit = load_stopped + 2 * max(MAP_BUDGET, CALL_TIMEOUT[1]) + 5  # past it, a call in progress hangs
        for thread in load:
            thread.join(max(0.0, limit - time.monotonic()))
        stuck_threads = [t.name for t in load if t.is_alive()]
        if asyncio_thread.is_alive() and loops:
            rescue(rec, loops[0])
            asyncio_thread.join(10)
        stop_aux.set()
        for thread in aux:
            thread.join(10)
        ran_s = load_stopped - started
        at_end = resources()
        pool_stats = {name: _stats(pool) for name, pool in pools}
    finally:
        for target in targets:
            for client in target.clients:
                client.close()
        for target in targets:
            target.server.stop()
        for _, pool in pools:
            pool.close()
    closed = time.monotonic()
    for thread in load:  # a thread hung in a call of a pool: close() must have ended that call
        thread.join(max(0.0, closed + 5.0 - time.monotonic()))
    stuck_after_close = [t.name for t in load if t.is_alive()]
    hangs, never_returned = rec.total_hangs()
    after_close, settled_in = settle(baseline)  # no gc.collect(): close() must release everything itself

    fds_now = _fd_table()
    leaked_fds = {fd: target for fd, target in fds_now.items() if baseline_fds.get(fd) != target}
    missing_fds = {fd: target for fd, target in baseline_fds.items() if fds_now.get(fd) != target}
    threads_now = _thread_names()
    extra_threads = list((collections.Counter(threads_now) - collections.Counter(baseline_threads)).elements())
    extra_python_threads = list(
        (collections.Counter(t.name for t in threading.enumerate()) - collections.Counter(baseline_python_threads)).elements()
    )
    children = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            children.append(f"{child.pid} {child.name()} {child.status()}")

    rss_at_60 = next((s["rss_mb"] for s in samples if s["t_s"] >= 60), None)
    growth = smoothed = None
    if rss_at_60 is not None and ran_s > 60:
        growth = round(100.0 * (at_end["rss_mb"] - rss_at_60) / rss_at_60, 2)
        # RSS swings by several MB from one sample to the next: the same growth, medians of the
        # samples within 10 s of minute 1 and of the last 20 s (reported, not judged).
        around_60 = [s["rss_mb"] for s in samples if 50 <= s["t_s"] <= 70]
        last = [s["rss_mb"] for s in samples if s["t_s"] >= ran_s - 20]
        if around_60 and last:
            smoothed = round(100.0 * (statistics.median(last) - statistics.median(around_60)) / statistics.median(around_60), 2)

    failures = []
    if hangs:
        failures.append(f"{hangs} hang(s)")
    if stuck_threads:
        failures.append(f"load threads still in a call at the end: {stuck_threads}")
    if stuck_after_close:
        failures.append(f"load threads still in a call after the pools closed: {stuck_after_close}")
    if rec.wrong_count:
        failures.append(f"{rec.wrong_count} wrong result(s)")
    if rec.foreign_count:
        failures.append(f"{rec.foreign_count} foreign exception(s)")
    for key in ("fds", "threads", "native_threads", "processes"):
        if after_close[key] != baseline[key]:
            failures.append(f"{key} after close {after_close[key]} != baseline {baseline[key]}")
    if ran_s > 120 and growth is not None and growth >= 10.0:
        failures.append(f"RSS grew {growth}% after the first minute")

    return {
        "benchmark": "soak",
        "seed": seed,
        "duration_s": duration,
        "ran_s": round(ran_s, 2),
        "settings": {
            "pools": {"single": {"size": 3, "threads_per_worker": 1}, "threaded": {"size": 2, "threads_per_worker": 4}},
            "queue_timeout_s": QUEUE_TIMEOUT,
            "call_timeout_s": list(CALL_TIMEOUT),
            "map_timeout_s": MAP_TIMEOUT,
            "map_budget_s": MAP_BUDGET,
            "kill_every_s": list(KILL_EVERY),
            "threads": THREADS,
            "async_lanes": ASYNC_LANES,
        },
        "calls": sum(rec.calls.values()),
        "calls_by_kind": {kind: rec.calls.get(kind, 0) for kind in KINDS},
        "calls_by_op": dict(sorted(rec.ops.items())),
        "outcomes": dict(rec.outcomes),
        "kills": sum(killer.kills.values()),
        "kills_by_pool": dict(killer.kills),
        "kills_by_worker_state": dict(killer.by_state),
        "kills_skipped": killer.skipped,
        "hangs": hangs,
        "hangs_never_returned": never_returned,
        "hang_reports": rec.hangs,
        "stuck_threads": stuck_threads,
        "stuck_after_close": stuck_after_close,
        "slowest_vs_budget": rec.max_ratio,
        "wrong_results": rec.wrong_count,
        "wrong_examples": rec.wrong,
        "foreign_exceptions": rec.foreign_count,
        "foreign_types": dict(rec.foreign_types),
        "foreign_examples": rec.foreign,
        "errors": dict(rec.errors.most_common()),
        "errors_by_kind": {kind: dict(counts) for kind, counts in rec.errors_by_kind.items()},
        "errors_by_op": {op: dict(counts) for op, counts in sorted(rec.errors_by_op.items())},
        "unexpected_errors": rec.unexpected,
        "crash_causes": dict(rec.crash_causes),
        "timeouts_by_stage": dict(rec.timeouts),
        "running_timeouts": rec.running_timeout_count,
        "running_timeout_details": rec.running_timeouts,
        "map_items": dict(rec.map_items),
        "events": {pool: dict(counts) for pool, counts in events.counts.items()},
        "pool_stats": pool_stats,
        "resources": {
            "before_warm_up": before_warm_up,
            "baseline": baseline,
            "start": at_start,
            "end": at_end,
            "after_close": after_close,
        },
        "settled_in_s": settled_in,
        "leaked_fds": {str(fd): target for fd, target in sorted(leaked_fds.items())},
        "leaked_fd_kinds": dict(collections.Counter(_fd_kind(t) for t in leaked_fds.values())),
        "closed_baseline_fds": {str(fd): target for fd, target in sorted(missing_fds.items())},
        "extra_threads": extra_threads,
        "extra_python_threads": extra_python_threads,
        "children_after_close": children,
        "rss_samples": samples,
        "rss_at_60s_mb": rss_at_60,
        "rss_growth_after_1min_pct": growth,
        "rss_growth_after_1min_smoothed_pct": smoothed,
        "rss_growth_judged": ran_s > 120,
        "failures": failures,
        "passed": not failures,
    }


def _guarded(rec: Recorder, where: str, target: Callable[..., None], args: tuple) -> None:
    """A load thread: anything escaping its calls' bookkeeping is recorded, not lost."""
    try:
        target(*args)
    except BaseException as exc:
        rec.foreign_outside(where, exc)


def _stats(pool: Pool) -> dict[str, Any]:
    stats = pool.stats()
    keep = (
        "requests",
        "errors",
        "timeouts",
        "queue_timeouts",
        "pool_saturated",
        "restarts",
        "retries",
        "hung",
        "deaths_by_cause",
        "quarantined",
        "sessions",
        "workers",
        "available",
        "busy",
        "waiting",
    )
    return {key: stats.get(key) for key in keep}


def _print(p: dict) -> None:
    res = p["resources"]
    print(f"\nSoak: {p['ran_s']:.0f} s of load, seed {p['seed']}")
    width = 34

    def row(name: str, value: Any) -> None:
        print(f"  {name.ljust(width)} {value}")

    row("calls", f"{p['calls']:,}")
    for kind, count in p["calls_by_kind"].items():
        row(f"  {kind}", f"{count:,}")
    row("map items", ", ".join(f"{k} {v:,}" for k, v in sorted(p["map_items"].items())) or "-")
    row("outcomes", ", ".join(f"{k} {v:,}" for k, v in sorted(p["outcomes"].items())))
    row("kills (SIGKILL)", f"{p['kills']} ({', '.join(f'{k} {v}' for k, v in sorted(p['kills_by_pool'].items()))})")
    row("hangs (> 2x own timeout)", p["hangs"])
    row("wrong results", p["wrong_results"])
    row(
        "foreign exceptions",
        p["foreign_exceptions"] if not p["foreign_types"] else f"{p['foreign_exceptions']} {p['foreign_types']}",
    )
    print("  errors by reason:")
    for key, count in p["errors"].items():
        row(f"  {key}", f"{count:,}")
    print("  timeouts by stage:")
    for key, count in sorted(p["timeouts_by_stage"].items()):
        row(f"  {key}", f"{count:,}")
    if not p["timeouts_by_stage"]:
        row("  (none)", "")
    row("crash causes seen by callers", p["crash_causes"] or "-")
    for name, stats in p["pool_stats"].items():
        events = p["events"].get(name, {})
        row(
            f"pool {name}",
            f"restarts {stats['restarts']}, quarantines {events.get('worker_quarantined', 0)}, "
            f"retries {stats['retries']}, sessions left {stats['sessions']}",
        )
    print(f"\n  {'resources'.ljust(width)} {'baseline':>9} {'start':>9} {'end':>9} {'after close':>12}")
    for key, label in (
        ("fds", "open fds"),
        ("threads", "threads (threading)"),
        ("native_threads", "threads (/proc Threads:)"),
        ("processes", "child processes"),
        ("rss_mb", "RSS MB"),
    ):
        values = [res[when][key] for when in ("baseline", "start", "end", "after_close")]
        print(f"  {label.ljust(width)} {values[0]:>9} {values[1]:>9} {values[2]:>9} {values[3]:>12}")
    growth = p["rss_growth_after_1min_pct"]
    row(
        "RSS at 60 s / growth to the end",
        f"{p['rss_at_60s_mb']} MB / {growth}%" + ("" if p["rss_growth_judged"] else " (not judged: run <= 2 min)")
        if growth is not None
        else "- (run <= 60 s)",
    )
    if p["rss_growth_after_1min_smoothed_pct"] is not None:
        row("  the same, medians (50-70 s, last 20 s)", f"{p['rss_growth_after_1min_smoothed_pct']}% (not judged)")
    if p["leaked_fds"]:
        row("fds left after close", f"{p['leaked_fd_kinds']} {p['leaked_fds']}")
    if p["extra_threads"]:
        row("threads left after close", p["extra_threads"])
    if p["children_after_close"]:
        row("processes left after close", p["children_after_close"])
    for report in p["running_timeout_details"][:10]:
        print(f"  running timeout: {report}")
    for example in p["wrong_examples"][:5]:
        print(f"  wrong: {example}")
    for example in p["foreign_examples"][:3]:
        print(f"  foreign: {example.get('kind', example.get('where'))}.{example.get('op', '')}\n{example['traceback']}")
    for report in p["hang_reports"][:5]:
        stack = report.get("stack") or ""
        summary = {k: v for k, v in report.items() if k != "stack"}
        print(f"  hang: {summary}" + (f"\n    waiting in:\n{stack}" if stack else ""))
    for report in p["unexpected_errors"][:5]:
        print(f"  unexpected error: {report}")
    print(f"\n  {'PASS' if p['passed'] else 'FAIL: ' + '; '.join(p['failures'])}")


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)

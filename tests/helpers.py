"""Adapters and utilities the tests share. Importable by name, so workers load it by path."""

from __future__ import annotations

import ctypes
import enum
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from snakepit import BaseAdapter, StreamChunk, tool


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def await_for(predicate, timeout: float = 10.0, interval: float = 0.01):
    """:func:`wait_for` for a coroutine: polls without blocking its event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def wait_for_file(path: str, timeout: float = 120.0) -> None:
    """In a worker: until ``path`` exists (a gate the test opens); polled with a deadline."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting to be)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Mode(str, enum.Enum):
    FAST = "fast"


@dataclass
class Point:
    x: int
    y: int


class Opaque:
    """Neither JSON nor convertible to it (pickles, by reference to this module)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Opaque

    def __hash__(self) -> int:
        return 0


class Unpicklable:
    """Pickles in the worker but refuses to load in the owner."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise RuntimeError("this object refuses to be unpickled")


def _stuck_in_c(seconds: int, marker: str = "") -> None:
    """What a cancel cannot interrupt: C code that holds the GIL and does not return to Python
    when a signal interrupts it (it masks signals, or retries its system call). ``marker``: a
    file made once signals are masked, for a test to know the tool is stuck."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - {signal.SIGTERM})
    if marker:
        open(marker, "w").close()
    try:
        ctypes.PyDLL(None).sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signal.valid_signals())


def _first_time(marker: str) -> bool:
    """True for the first caller naming ``marker`` (a file), on any process."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class Toolbox(BaseAdapter):
    """A bit of everything, for exercising the pool against real workers."""

    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting
        self.initialized = 0
        self.closed_streams = 0
        self.calls = 0

    def initialize(self) -> None:
        self.initialized += 1

    def cleanup(self) -> None:
        marker = os.environ.get("SNAKEPIT_TEST_CLEANUP_FILE")
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()}\n")

    @tool
    def add(self, a: int, b: int = 1) -> int:
        """Add two integers.

        The second paragraph is not part of the description.
        """
        return a + b

    @tool(description="echo the value back", name="echo")
    def echo_value(self, value: Any = None) -> Any:
        return value

    @tool
    def typed_kinds(self, text: str, number: float = 0.0) -> list:
        """What a tool with annotated parameters receives."""
        return [type(text).__name__, type(number).__name__, number]

    @tool
    def typed_containers(
        self, row: list[float], counts: dict[str, int] | None = None, flags: tuple[bool, ...] = (), label: str = ""
    ) -> list:
        """Each value received, with its type's name: what typed containers are converted to."""
        counts = counts or {}
        return [[type(value).__name__, value] for value in (*row, *counts, *counts.values(), *flags, label)]

    @tool
    def first(self, items: list) -> Any:
        """``next`` on an empty list lets a StopIteration escape the tool."""
        return next(iter(items))

    @tool
    def state(self) -> dict:
        self.calls += 1
        return {
            "pid": os.getpid(),
            "initialized": self.initialized,
            "closed_streams": self.closed_streams,
            "calls": self.calls,
            "greeting": self.greeting,
            "cwd": os.getcwd(),
            "sys_path": list(sys.path),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SNAKEPIT_TEST_VAR")},
        }

    @tool
    def point(self, x: int, y: int) -> Point:
        return Point(x, y)

    @tool
    def pair(self, p: tuple[int, int], scale: float = 1.0) -> tuple:
        return (p[0] * scale, p[1] * scale)

    @tool
    def kinds(self, value: Any) -> str:
        return type(value).__name__

    @tool
    def sleep(self, seconds: float, marker: str = "") -> float:
        if marker:  # a file made as the sleep begins, for a test to know the tool runs
            open(marker, "w").close()
        time.sleep(seconds)
        return seconds

    @tool
    def fail(self, message: str = "boom") -> None:
        raise ValueError(message)

    @tool
    def unserializable_result(self) -> Any:
        import threading

        return {"lock": threading.Lock()}

    @tool
    def unloadable_result(self) -> Any:
        return Unpicklable()

    @tool
    def crash(self, code: int = 7) -> None:
        os._exit(code)

    @tool
    def segfault(self) -> None:
        ctypes.string_at(0)

    @tool
    def kill_self(self, signum: int = signal.SIGKILL) -> None:
        os.kill(os.getpid(), signum)

    @tool
    def count(self, n: int, delay: float = 0.0):
        for i in range(n):
            if delay:
                time.sleep(delay)
            yield {"number": i, "is_last": i == n - 1}

    # -- telemetry -----------------------------------------------------------------------------

    @tool
    def measured(self, rows: int = 1) -> int:
        """Telemetry of every kind, and a log record."""
        import logging

        from snakepit import telemetry

        telemetry.emit("loaded", {"rows": rows}, {"source": "test"})
        with telemetry.span("work", {"step": 1}):
            pass
        try:
            with telemetry.span("failing"):
                raise ValueError("bad input")
        except ValueError:
            pass
        logging.getLogger("tool").warning("measured %d rows", rows)
        return rows

    @tool
    def measured_stream(self, n: int = 2):
        from snakepit import telemetry

        for i in range(n):
            telemetry.emit("chunk", {"i": i})
            yield i

    @tool
    def listening(self) -> bool:
        """Whether this worker sends tools' telemetry to the owner now."""
        from snakepit import telemetry

        return telemetry._sink is not None

    @tool
    def chatty(self, n: int) -> int:
        """Many telemetry events at once: more than a slow subscriber's buffer holds."""
        from snakepit import telemetry

        for i in range(n):
            telemetry.emit("tick", {"i": i})
        return n

    @tool
    def odd_telemetry(self) -> int:
        from snakepit import telemetry

        telemetry.emit("odd", {"value": Point(1, 2), "huge": 1 << 70, "fine": 1.5}, {7: "seven"})
        return 1

    # -- idempotent tools: the pool runs them again when their worker dies under them ----------

    @tool(idempotent=True)
    def crash_first(self, marker: str, value: int = 0) -> dict:
        """Kills its worker the first time ``marker`` is seen (any worker), answers after."""
        if _first_time(marker):
            os._exit(9)
        return {"value": value, "pid": os.getpid()}

    @tool(idempotent=True)
    def crash_always(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @tool(idempotent=True)
    def crash_at_gate(self, path: str, marker: str) -> None:
        """Make ``marker``, then kill its worker once the file ``path`` exists."""
        open(marker, "w").close()
        wait_for_file(path)
        os._exit(9)

    @tool(idempotent=True)
    def stream_crash_first(self, marker: str, n: int = 3):
        if _first_time(marker):
            os._exit(9)
        yield from range(n)

    @tool(idempotent=True)
    def stream_then_die(self, n: int = 2):
        yield from range(n)
        time.sleep(0.2)  # the chunks reach the caller first
        os._exit(9)

    @tool(idempotent=True)
    def square_or_die(self, x: int, poison: int = -1, marker: str = "") -> int:
        """For maps: the ``poison`` item always kills its worker; with a ``marker``, the first
        item to run kills its worker (once, whichever worker runs it)."""
        if x == poison or (marker and _first_time(marker)):
            os._exit(9)
        return x * x

    @tool
    def guarded(self, n: int = 1_000_000, delay: float = 0.0):
        """Counts streams whose generator was closed (its finally ran)."""
        try:
            for i in range(n):
                if delay:
                    time.sleep(delay)
                yield i
        finally:
            self.closed_streams += 1

    @tool
    def with_final(self, n: int = 3, extra_after_final: bool = True):
        for i in range(n):
            yield StreamChunk(data={"i": i}, metadata={"seq": i})
        yield StreamChunk(data={"done": True}, is_final=True, metadata={"total": n})
        if extra_after_final:
            yield {"never": "delivered"}

    @tool
    def odd_metadata(self):
        """Chunk metadata that takes the server's own keys, and what UTF-8 cannot hold."""
        yield StreamChunk(data=1, metadata={"content_type": "text/plain", "snakepit-content-type": "application/x-python-pickle"})
        yield StreamChunk(data=b"raw", metadata={"\udcff-key": "lone \udcff", 7: (1, 2)})
        yield StreamChunk(
            data=3,
            is_final=True,
            metadata={"worker_id": "not mine", "correlation_id": "forged", "synthetic_final": "true", "execution_time_ms": "x"},
        )

    @tool
    def yield_then_work(self, seconds: float = 2.0):
        yield {"stage": "first"}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # CPU-bound: holds the GIL
            pass
        yield {"stage": "second"}

    @tool
    def stream_then_fail(self, n: int = 3):
        for i in range(n):
            yield i
        raise RuntimeError(f"failed after {n}")

    @tool
    def stream_then_crash(self, n: int = 3):
        for i in range(n):
            yield i
        import sys as _sys

        _sys.stdout.flush()
        os._exit(9)

    @tool
    def stream_values(self, values: list) -> Any:
        yield from values

    @tool(supports_streaming=True)
    def iterable(self, n: int = 3):
        return iter(range(n))

    @tool(supports_streaming=False)
    def not_a_stream(self, n: int = 3):
        yield from range(n)

    @tool
    def reuse_dict(self, n: int = 5):
        d = {"i": 0}
        for i in range(n):
            d["i"] = i
            yield d

    @tool
    def deep(self, depth: int) -> list:
        value: list = []
        for _ in range(depth - 1):
            value = [value]
        return value

    @tool
    def deep_chunks(self, depth: int):
        yield self.deep(depth)

    @tool
    def big(self, size: int) -> bytes:
        return b"x" * size

    @tool
    def shared_array(self, size: int):
        """An array from snakepit.shared, and whether it is in shared memory (a plain array has no base)."""
        from snakepit import shared

        array = shared.zeros(size, dtype="u1")
        return array.base is not None, array

    @tool
    def big_then_small(self, size: int, small: int = 1000, delay: float = 0.001):
        """One big chunk, then a long tail of small ones: a stream that goes on after a big value."""
        yield b"x" * size
        for i in range(small):
            time.sleep(delay)
            yield i

    @tool
    def huge_int(self) -> int:
        return 2**100

    @tool
    def big_with_odd_metadata(self, size: int, n: int = 3):
        """Large chunks (shared memory) whose metadata msgpack cannot carry (an int beyond 64 bits)."""
        for i in range(n):
            yield StreamChunk(data=bytes([65 + i]) * size, metadata={"n": 2**70 + i})

    @tool
    def tuple_keys(self) -> dict:
        return {(1, 2): 3, "nested": [{(3,): {4, 5}}]}

    @tool
    def undecodable_name(self) -> str:
        """A file name that is not UTF-8, as os.fsdecode gives it: a str with a lone surrogate."""
        return os.fsdecode(b"caf\xe9.txt")

    @tool
    def kwargs(self, a: int, **rest: Any) -> dict:
        return {"a": a, **rest}

    @tool
    def talk(self) -> None:
        import logging

        print("printed to stdout")
        print("printed to stderr", file=sys.stderr)
        logging.getLogger("toolbox").error("logged at error")
        logging.getLogger("toolbox").debug("logged at debug: below the owner's level, never sent")
        os.write(1, b"written to fd 1 from C\n")

    # -- gates: a tool that waits for the test to let it go ----------------------------------------

    @tool
    def gate(self, path: str, marker: str = "", value: int = 0) -> int:
        """Make ``marker`` (the tool runs), wait until the file ``path`` exists, return ``value``."""
        if marker:
            open(marker, "w").close()
        wait_for_file(path)
        return value

    @tool
    def gated_count(self, path: str, n: int = 3, marker: str = ""):
        """Yield 0, make ``marker``, wait until ``path`` exists, then yield 1..n-1."""
        yield 0
        if marker:
            open(marker, "w").close()
        wait_for_file(path)
        yield from range(1, n)


class FailingInit(BaseAdapter):
    def initialize(self) -> None:
        raise RuntimeError("cannot load the model")

    @tool
    def noop(self) -> None:
        return None


class Faulty(BaseAdapter):
    """Tools that misbehave in the ways a supervisor must survive."""

    def __init__(self) -> None:
        self.hoard: list[bytes] = []
        self.closed_streams = 0
        self.finished_calls = 0
        self.produced = 0

    @tool
    def pid(self) -> int:
        return os.getpid()

    @tool
    def hold(self, payload: bytes, seconds: float) -> int:
        """Takes a large argument, then sleeps."""
        time.sleep(seconds)
        return len(payload)

    @tool
    def spin(self, seconds: float = 60.0) -> None:
        """CPU-bound pure Python: no cooperative cancellation point."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass

    @tool
    def c_sleep(self, seconds: int = 60, marker: str = "") -> None:
        """Stuck in C code holding the GIL (PyDLL keeps it during the call)."""
        _stuck_in_c(seconds, marker)

    @tool
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @tool
    def exit(self, code: int = 3) -> None:
        os._exit(code)

    @tool
    def raise_base(self, kind: str = "SystemExit") -> None:
        if kind == "SystemExit":
            raise SystemExit(5)
        raise KeyboardInterrupt()

    @tool
    def allocate(self, mb: int) -> int:
        self.hoard.append(bytearray(mb << 20))
        for block in self.hoard:  # touch the pages so they count in RSS
            block[::4096] = b"x" * len(block[::4096])
        return len(self.hoard)

    @tool
    def chatty(self, lines: int = 1000, width: int = 200) -> int:
        import logging

        line = "x" * width
        for i in range(lines):
            print(f"{i} {line}")
            if i % 100 == 0:
                logging.getLogger("chatty").warning("still talking: %d", i)
        return lines

    @tool
    def stubborn(self, block: int = 30, marker: str = ""):
        """Yields once, then blocks in C (holding the GIL) between yields, far longer than any
        cancel grace: nothing can interrupt it."""
        try:
            yield 0
            _stuck_in_c(block, marker)
            yield 1
        finally:
            self.closed_streams += 1

    @tool
    def blocked(self, how: str = "sleep", seconds: float = 60.0) -> str:
        """Blocks the way a tool does (a sleep, a lock, a socket, pure-Python work); counts the
        calls whose ``finally`` ran."""
        try:
            if how == "sleep":
                time.sleep(seconds)
            elif how == "lock":
                import threading

                lock = threading.Lock()
                lock.acquire()
                lock.acquire(timeout=seconds)
            elif how == "socket":
                import socket

                left, right = socket.socketpair()
                with left, right:
                    left.settimeout(seconds)
                    left.recv(1)
            elif how == "spin":
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    pass
            elif how == "swallow":  # a tool whose `except Exception` must not swallow the cancel
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    try:
                        time.sleep(seconds)
                    except Exception:
                        pass
            return how
        finally:
            self.finished_calls += 1

    @tool
    def blocked_stream(self, seconds: float = 60.0):
        """Yields once, then blocks between two yields."""
        try:
            yield 0
            time.sleep(seconds)
            yield 1
        finally:
            self.closed_streams += 1

    @tool(supports_streaming=True)
    def slow_list(self, seconds: float = 30.0):
        """A streaming tool that is not a generator: its body runs before any chunk."""
        try:
            time.sleep(seconds)
            return [1, 2, 3]
        finally:
            self.finished_calls += 1

    @tool
    def log_flood(self, size: int = 1 << 20, seconds: float = 30.0) -> int:
        """Logs records bigger than the events pipe holds, as fast as it can."""
        import logging

        record = "x" * size
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            logging.getLogger("flood").warning(record)
            count += 1
        return count

    @tool
    def counters(self) -> dict:
        return {"pid": os.getpid(), "finished_calls": self.finished_calls, "closed_streams": self.closed_streams}

    @tool
    def flooded(self) -> dict:
        """How many chunks ``flood`` made, and whether its stream was closed."""
        return {"produced": self.produced, "closed_streams": self.closed_streams}

    @tool
    def flood(self, size: int = 1 << 20, n: int = 1_000_000):
        """Yields ``n`` chunks of ``size`` bytes as fast as they are taken, counting them."""
        chunk = b"x" * size
        try:
            for _ in range(n):
                self.produced += 1
                yield chunk
        finally:
            self.closed_streams += 1

    @tool
    def guarded(self, delay: float = 0.01):
        try:
            while True:
                time.sleep(delay)
                yield 1
        finally:
            self.closed_streams += 1

    @tool
    def closed(self) -> int:
        return self.closed_streams

    @tool
    def count(self, n: int):
        for _ in range(n):
            yield 1


class DiesSoon(BaseAdapter):
    """Every worker exits ``after`` seconds after initializing, whatever it is doing: a broken
    runtime, a crash loop."""

    def initialize(self) -> None:
        import threading

        threading.Thread(target=lambda: (time.sleep(0.3), os._exit(3)), daemon=True).start()

    @tool
    def work(self, seconds: float = 1.0) -> float:
        time.sleep(seconds)
        return seconds


class BreaksOnRestart(BaseAdapter):
    """Starts fine until ``marker`` exists; from then on every new worker fails to initialize."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def initialize(self) -> None:
        if os.path.exists(self.marker):
            raise RuntimeError("the model file is corrupt")

    @tool
    def pid(self) -> int:
        return os.getpid()


class SlowStart(BaseAdapter):
    """``initialize`` takes far longer than any start_timeout a test sets."""

    def initialize(self) -> None:
        time.sleep(30)

    @tool
    def noop(self) -> None:
        return None


class Spawner(BaseAdapter):
    """Tools that leave processes behind, the ways real tools do."""

    def __init__(self) -> None:
        self.children: list[Any] = []

    @tool
    def background(self) -> None:
        """``sh -c "cmd &"``: the shell exits at once and its background job is orphaned."""
        import subprocess

        subprocess.run(["/bin/sh", "-c", "sleep 0.01 &"], check=True)

    @tool
    def start_children(self, code: int) -> list[int]:
        """A Popen child and a forked child that exit with ``code``; waited for later."""
        import subprocess

        popen = subprocess.Popen(["/bin/sh", "-c", f"exit {code}"])
        forked = os.fork()
        if forked == 0:
            os._exit(code)
        self.children = [popen, forked]
        return [popen.pid, forked]

    @tool
    def start_library_children(self, seconds: float = 0.2) -> list[int]:
        """Children made the ways libraries make them: multiprocessing (fork and spawn start
        methods) and pty.fork; waited for in a later call."""
        import multiprocessing
        import pty

        self.library_children = [
            multiprocessing.get_context(method).Process(target=time.sleep, args=(seconds,)) for method in ("fork", "spawn")
        ]
        for process in self.library_children:
            process.start()
        pid, self.pty_fd = pty.fork()
        if pid == 0:
            os._exit(7)
        self.pty_child = pid
        return [process.pid for process in self.library_children] + [pid]

    @tool
    def wait_library_children(self) -> list[Any]:
        for process in self.library_children:
            process.join(10)
        os.close(self.pty_fd)
        status = os.waitstatus_to_exitcode(os.waitpid(self.pty_child, 0)[1])
        return [process.exitcode for process in self.library_children] + [status]

    @tool
    def wait_children(self) -> list[int]:
        popen, forked = self.children
        return [popen.wait(), os.waitstatus_to_exitcode(os.waitpid(forked, 0)[1])]

    @tool
    def spawn(self, how: str = "popen", then: str = "return") -> int:
        """Start a long ``sleep`` (``popen``; ``session``: in a session of its own; ``fork``; ``daemon``:
        a double fork, so it is re-parented at once), then return its pid, or exit, or hang in C."""
        import subprocess

        if how == "popen":
            pid = subprocess.Popen(["sleep", "300"]).pid
        elif how == "session":
            pid = subprocess.Popen(["sleep", "300"], start_new_session=True).pid
        elif how == "fork":
            pid = os.fork()
            if pid == 0:
                os.execvp("sleep", ["sleep", "300"])
        else:
            read, write = os.pipe()
            middle = os.fork()
            if middle == 0:
                if os.fork() == 0:
                    os.write(write, str(os.getpid()).encode())
                    os.execvp("sleep", ["sleep", "300"])
                os._exit(0)
            os.waitpid(middle, 0)
            pid = int(os.read(read, 32))
        if then == "exit":
            with open(os.environ["SNAKEPIT_TEST_SPAWNED"], "a") as record:
                record.write(f"{pid}\n")
            os._exit(4)
        if then == "c_sleep":
            with open(os.environ["SNAKEPIT_TEST_SPAWNED"], "a") as record:
                record.write(f"{pid}\n")
            _stuck_in_c(60)
        return pid

    @tool
    def pid(self) -> int:
        return os.getpid()


# -- fault injection for the crash matrix ------------------------------------------------------------

FAULT_EXIT_CODE = 7


def fail(how: str) -> None:
    """Fail the way a process or a tool can: raise, exit, be killed, crash."""
    if how == "raise":
        raise RuntimeError("injected fault")
    if how == "systemexit":  # a BaseException: the worker must survive it as any other
        raise SystemExit("injected fault")
    if how == "exit":
        os._exit(FAULT_EXIT_CODE)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segv":
        ctypes.string_at(0)
    raise ValueError(f"unknown fault {how!r}")


class Fault:
    """A value that fails while it is pickled (``when="dump"``, wherever that is) or unpickled
    (``when="load"``): it carries a fault into any stage of a call."""

    def __init__(self, how: str, when: str) -> None:
        self.how = how
        self.when = when

    def __reduce__(self):
        if self.when == "dump":
            fail(self.how)
        return (fail, (self.how,))


class Matrix(BaseAdapter):
    """One tool per way a value reaches a stage: echoed arguments, produced results, failures
    while running; and their streaming twins, which yield a first chunk before."""

    @tool
    def echo(self, value: Any = None) -> Any:
        return value

    @tool
    def produce(self, how: str, when: str) -> Any:
        import threading

        if how == "none":
            return "ok"
        return threading.Lock() if how == "unpicklable" else Fault(how, when)

    @tool
    def fail_by(self, how: str) -> str:
        if how == "none":
            return "ok"
        fail(how)
        return "unreachable"

    @tool
    def stream_echo(self, value: Any = None):
        yield "first"
        yield value

    @tool
    def stream_produce(self, how: str, when: str):
        yield "first"
        yield self.produce(how, when)

    @tool
    def stream_fail_by(self, how: str):
        yield "first"
        fail(how)

    @tool
    def pid(self) -> int:
        return os.getpid()

    @tool
    def hold(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


class GatedStart(BaseAdapter):
    """Workers that only the test lets through: ``initialize()`` makes ``marker`` and waits until
    the file ``gate`` exists; ``cleanup()`` waits until ``cleanup_gate`` exists, then appends
    its pid to ``cleaned``."""

    def __init__(self, gate: str = "", marker: str = "", cleanup_gate: str = "", cleaned: str = "") -> None:
        self.gate = gate
        self.marker = marker
        self.cleanup_gate = cleanup_gate
        self.cleaned = cleaned

    def initialize(self) -> None:
        if self.marker:
            open(self.marker, "w").close()
        if self.gate:
            wait_for_file(self.gate)

    def cleanup(self) -> None:
        if self.cleanup_gate:
            wait_for_file(self.cleanup_gate)
        if self.cleaned:
            with open(self.cleaned, "a") as f:
                f.write(f"{os.getpid()}\n")

    @tool
    def add(self, a: int, b: int = 1) -> int:
        return a + b

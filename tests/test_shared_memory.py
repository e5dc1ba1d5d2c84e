"""Large values through shared memory (snakepit/_backends/process/segments.py): the values arrive
whole and with their types, nothing is copied into frames, and no segment outlives its use -- a
close, a crash of either side, a cancelled stream."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from snakepit import BaseAdapter, Pool, SnakepitError, tool
from snakepit._protocol import SHARE_THRESHOLD

np = pytest.importorskip("numpy")

MIB = 1 << 20
NAME = "memfd:snakepit-value"


class Arrays(BaseAdapter):
    def initialize(self) -> None:
        self.kept = None

    @tool
    def arange(self, n: int):
        return np.arange(n, dtype=np.float64)

    @tool
    def describe(self, x) -> dict:
        return {"type": type(x).__name__, "sum": float(x.sum()), "writeable": bool(x.flags.writeable), "shape": list(x.shape)}

    @tool
    def keep(self, x) -> int:
        self.kept = x  # held by the worker: shared pages, not its own memory
        return x.nbytes

    @tool
    def blob(self, n: int, kind: str = "bytes"):
        data = bytes(range(256)) * (n // 256)
        return bytearray(data) if kind == "bytearray" else data

    @tool
    def nested(self, n: int) -> dict:
        return {"a": np.full(n, 1.5), "b": [np.ones(n, dtype=np.int32), "text"], "small": np.arange(3)}

    @tool
    def chunks(self, count: int, n: int, delay: float = 0.0):
        for i in range(count):
            yield np.full(n, float(i))
            if delay:
                time.sleep(delay)

    @tool
    def chunks_then_die(self, count: int, n: int):
        for i in range(count):
            yield np.full(n, float(i))
        os.kill(os.getpid(), signal.SIGKILL)


def _segments(pid: int) -> tuple[int, int]:
    """How many segments ``pid`` maps, and how many it holds descriptors of."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = sum(1 for line in f if NAME in line)
        fds = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                fds += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/" + NAME)
            except OSError:
                pass
    except FileNotFoundError:
        return 0, 0
    return maps, fds


def _shmem_kib() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Shmem:"))


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def arrays():
    with Pool(Arrays, size=1) as pool:
        yield pool


def test_large_results_arguments_and_chunks_arrive_whole_with_their_types(arrays):
    n = 4 * MIB // 8
    result = arrays.execute("arange", {"n": n})
    assert isinstance(result, np.ndarray) and result.shape == (n,) and result[-1] == n - 1
    assert result.flags.writeable  # as an unpickled array is
    result[0] = 42.0
    assert result[0] == 42.0

    argument = np.arange(n, dtype=np.float64)
    assert arrays.execute("describe", {"x": argument}) == {
        "type": "ndarray",
        "sum": float(argument.sum()),
        "writeable": True,
        "shape": [n],
    }

    nested = arrays.execute("nested", {"n": n})
    assert nested["a"].dtype == np.float64 and (nested["a"] == 1.5).all()
    assert nested["b"][0].dtype == np.int32 and nested["b"][1] == "text" and list(nested["small"]) == [0, 1, 2]

    seen = [float(chunk[0]) for chunk in arrays.stream("chunks", {"count": 6, "n": n})]
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("kind", ["bytes", "bytearray"])
def test_large_bytes_keep_their_type(arrays, kind):
    value = arrays.execute("blob", {"n": 2 * MIB, "kind": kind})
    assert type(value).__name__ == kind and len(value) == 2 * MIB and value[:3] == b"\x00\x01\x02"


def test_large_values_travel_beside_the_frame_not_in_it(arrays):
    """The frame carries a header, not the bytes: the owner reads little from the pipe."""
    conn = next(iter(arrays._dispatcher.workers.values())).conn
    before = conn.reader.received
    value = arrays.execute("arange", {"n": 16 * MIB // 8})
    assert value.nbytes == 16 * MIB
    assert conn.reader.received - before < 4096
    small_before = conn.reader.received
    arrays.execute("arange", {"n": SHARE_THRESHOLD // 8 // 4})  # below the threshold: in the frame
    assert conn.reader.received - small_before > SHARE_THRESHOLD // 4


def test_segments_are_reused_not_made_per_value(arrays):
    worker = arrays.stats()["worker_info"][0]["pid"]
    for _ in range(3):
        arrays.execute("arange", {"n": 8 * MIB // 8})
        arrays.execute("describe", {"x": np.ones(8 * MIB // 8)})
    settled, owner = _segments(worker), _segments(os.getpid())
    for _ in range(40):
        arrays.execute("arange", {"n": 8 * MIB // 8})
        arrays.execute("describe", {"x": np.ones(8 * MIB // 8)})
    # None more (fewer, if what earlier tests left behind was released meanwhile).
    for pid, before in ((worker, settled), (os.getpid(), owner)):
        assert all(now <= then for now, then in zip(_segments(pid), before)), (pid, before)


def test_a_worker_holding_a_large_argument_is_not_recycled_for_shared_memory():
    with Pool(Arrays, size=1, memory_limit_mb=150) as pool:
        assert pool.execute("keep", {"x": np.ones(400 * MIB // 8)}) == 400 * MIB
        assert pool.execute("describe", {"x": np.ones(8)})["sum"] == 8.0
        stats = pool.stats()
        assert stats["recycled"] == 0 and stats["restarts"] == 0
        assert stats["worker_info"][0]["rss"] < 150 * MIB  # its own memory, not the shared pages


def test_a_cancelled_stream_of_large_chunks_leaves_the_worker_usable(arrays):
    n = 8 * MIB // 8
    with arrays.stream("chunks", {"count": 1000, "n": n}) as stream:
        for i, _chunk in enumerate(stream):
            if i == 3:
                break
    assert arrays.execute("arange", {"n": 10}).tolist() == list(range(10))
    assert arrays.stats()["restarts"] == 0


def test_chunks_yielded_before_the_worker_died_are_still_delivered():
    with Pool(Arrays, size=1) as pool:
        received = []
        with pytest.raises(SnakepitError) as info:
            for chunk in pool.stream("chunks_then_die", {"count": 5, "n": MIB // 8}):
                received.append(float(chunk[0]))
        assert info.value.reason == "worker_crashed"
        assert received == [0.0, 1.0, 2.0, 3.0, 4.0]


def _close_and_kill_scenario() -> None:
    """Run in a process of its own (see the test below): no other pool's segments to count."""
    import json

    baseline = _segments(os.getpid())
    with Pool(Arrays, size=1) as pool:
        kept = pool.execute("arange", {"n": 64 * MIB // 8})
        pool.execute("describe", {"x": np.ones(32 * MIB // 8)})  # the owner's own segments too
        worker = pool.stats()["worker_info"][0]["pid"]
        stream = pool.stream("chunks", {"count": 10_000, "n": 16 * MIB // 8})
        next(stream)
        os.kill(worker, signal.SIGKILL)  # mid-transfer: segments placed, sent, in flight
        crashed = False
        try:
            for _ in stream:
                pass
        except SnakepitError as exc:
            crashed = exc.reason == "worker_crashed"
        del stream
        replaced = pool.execute("arange", {"n": 10}).tolist() == list(range(10))
    holding = _segments(os.getpid())
    intact = bool(kept[-1] == 64 * MIB // 8 - 1)
    del kept
    gc.collect()
    print(
        json.dumps(
            {
                "baseline": baseline,
                "holding": holding,
                "after": _segments(os.getpid()),
                "crashed": crashed,
                "replaced": replaced,
                "intact": intact,
            }
        )
    )


def run_scenario(call: str) -> dict:
    """The JSON a scenario of a test module prints, run in a process of its own (``call``:
    ``"module.function"``); the system's shared memory must then be back where it was."""
    import json

    module, function = call.split(".")
    baseline = _shmem_kib()
    done = subprocess.run(
        [sys.executable, "-c", f"import {module} as t; t.{function}()"],
        cwd=os.path.dirname(__file__),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Every segment, of either process, is gone: the system's shared memory is back where it was.
    assert _wait_for(lambda: _shmem_kib() - baseline < 32 * 1024), _shmem_kib() - baseline
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr[-3000:]}


def test_no_segment_outlives_close_or_a_worker_killed_mid_transfer():
    run = run_scenario("test_shared_memory._close_and_kill_scenario")
    assert run["crashed"] and run["replaced"]
    assert run["baseline"] == [0, 0]
    assert run["intact"] and run["holding"] == [1, 1]  # a value outlives its pool: its mapping is its own
    assert run["after"] == [0, 0]  # dropped: nothing of it left


def kill_owner_streaming(tmp_path, module: str, setup: str, adapter: str = "Arrays") -> None:
    """Run an owner (``setup``: what it runs in a pool, as ``pool``, before it streams large
    chunks), SIGKILL it mid-stream, and check that no segment survives it."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from {module} import {adapter}
        from snakepit import Pool, shared
        if __name__ == "__main__":
            with Pool({adapter}, size=1) as pool:
                {setup}
                for chunk in pool.stream("chunks", {{"count": 1_000_000, "n": {16 * MIB // 8}}}):
                    print("streaming", flush=True)
        """
    )
    path = tmp_path / "owner.py"
    path.write_text(script)
    baseline = _shmem_kib()
    owner = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "streaming"
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()
    # The worker dies with its owner (PDEATHSIG), and every segment with the last process using it.
    assert _wait_for(lambda: _shmem_kib() - baseline < 32 * 1024), _shmem_kib() - baseline


def test_no_segment_outlives_an_owner_killed_mid_transfer(tmp_path):
    kill_owner_streaming(tmp_path, "test_shared_memory", "pass")

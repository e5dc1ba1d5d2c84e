"""Arrays allocated in shared memory (snakepit.shared): sent by reference, with no copy at all --
the receiver maps the sender's pages, read-only, and the sender's array becomes read-only; a
segment is reused only once every holder is done with it; anything else travels as before; a
worker's memory counts what its arrays hold; and nothing outlives its use, whoever is killed."""

from __future__ import annotations

import gc
import json
import os
import signal

import pytest
from test_shared_memory import NAME, _segments, _wait_for, kill_owner_streaming, run_scenario

from snakepit import BaseAdapter, Pool, SnakepitError, shared, tool
from snakepit._protocol import SHARE_THRESHOLD

np = pytest.importorskip("numpy")

MIB = 1 << 20


def _inode(array) -> int | None:
    """The inode of the shared segment ``array``'s data lies in, in this process (None: not in one)."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return int(fields[4]) if NAME in line else None
    return None


class Shared(BaseAdapter):
    def initialize(self) -> None:
        self.kept = None

    @tool
    def make(self, n: int, value: float = 1.0, keep: bool = False):
        array = shared.empty(n)
        array.fill(value)
        if keep:
            self.kept = array
        return array

    @tool
    def make_several(self, n: int) -> dict:
        whole = shared.empty((4, n))
        whole[:] = np.arange(4)[:, None]
        return {"rows": whole[1:3], "column": whole[:, 0], "inode": _inode(whole)}

    @tool
    def kept_writeable(self) -> bool:
        return bool(self.kept.flags.writeable)

    @tool
    def write_kept(self, value: float) -> None:
        self.kept.flags.writeable = True  # what a tool must not do: it shows the pages are the same
        self.kept[0] = value

    @tool
    def describe(self, x) -> dict:
        return {"writeable": bool(x.flags.writeable), "sum": float(x.sum()), "inode": _inode(x)}

    @tool
    def hold(self, x) -> int:
        self.kept = x
        return x.nbytes

    @tool
    def drop(self) -> None:
        self.kept = None

    @tool
    def chunks(self, count: int, n: int):
        for i in range(count):
            array = shared.empty(n)
            array.fill(i)
            yield array

    @tool
    def hold_own(self, n: int) -> int:
        self.kept = shared.zeros(n, dtype="u1")
        return int(self.kept.sum())


@pytest.fixture(scope="module")
def pool():
    with Pool(Shared, size=1) as pool:
        yield pool


def test_a_returned_array_arrives_by_reference_read_only(pool):
    n = 8 * MIB // 8
    result = pool.execute("make", {"n": n, "value": 3.0, "keep": True})
    assert result.shape == (n,) and (result == 3.0).all()
    assert not result.flags.writeable  # the sender's pages: nobody may write them now
    with pytest.raises(ValueError):
        result.flags.writeable = True
    assert _inode(result) is not None
    assert pool.execute("kept_writeable") is False  # the sender's array became read-only when sent
    pool.execute("write_kept", {"value": 42.0})
    assert result[0] == 42.0  # the same pages: no byte was copied
    pool.execute("drop")


def test_a_segment_is_reused_only_once_every_holder_has_dropped_it(pool):
    n = 4 * MIB // 8
    first = pool.execute("make", {"n": n, "value": 1.0})
    second = pool.execute("make", {"n": n, "value": 2.0})  # the first delivery is held: another segment
    assert _inode(first) != _inode(second)
    assert (first == 1.0).all() and (second == 2.0).all()
    inodes = {_inode(first), _inode(second)}
    del first, second
    third = pool.execute("make", {"n": n, "value": 3.0})
    assert _inode(third) in inodes and (third == 3.0).all()  # dropped: reused


def test_views_in_a_segment_go_by_reference_and_other_arrays_are_copied(pool):
    n = MIB // 8
    parts = pool.execute("make_several", {"n": n})
    rows = parts["rows"]
    assert rows.shape == (2, n) and (rows[0] == 1).all() and (rows[1] == 2).all()
    assert not rows.flags.writeable and _inode(rows) is not None  # contiguous rows: by reference
    assert parts["column"].tolist() == [0, 1, 2, 3] and parts["column"].flags.writeable  # small, strided: a copy
    owned = shared.zeros((2, 4 * n))
    strided = owned[:, ::2]  # not contiguous: pickled, copied
    assert pool.execute("describe", {"x": strided})["writeable"] and owned.flags.writeable
    plain = np.ones(4 * n)  # not in a segment: one copy, as before
    seen = pool.execute("describe", {"x": plain})
    assert seen["writeable"] and seen["sum"] == 4.0 * n and plain.flags.writeable


def test_a_transposed_array_is_copied_not_lent(pool):
    # Not C-contiguous, so not by reference (numpy pickles it through a C-ordered transposed view
    # made for the purpose, which lies in the segment too): copied once, it stays the sender's.
    sent = shared.zeros((4, MIB // 8)).T
    seen = pool.execute("describe", {"x": sent})
    assert seen["inode"] != _inode(sent) and seen["sum"] == 0.0
    assert sent.flags.writeable  # nothing delivered can change under its receiver


def test_an_owner_array_goes_to_the_worker_by_reference(pool):
    x = shared.zeros(8 * MIB // 8)
    x += 2.0
    seen = pool.execute("describe", {"x": x})
    assert seen["writeable"] is False and seen["sum"] == 2.0 * x.size
    assert seen["inode"] == _inode(x) is not None  # the worker mapped the owner's pages
    assert not x.flags.writeable  # sent: read-only from now on
    # The worker holds it while the owner drops it: the segment waits for both.
    assert pool.execute("hold", {"x": x}) == x.nbytes
    inode = _inode(x)
    del x
    y = shared.zeros(8 * MIB // 8)
    assert _inode(y) != inode
    pool.execute("drop")


def test_yielded_arrays_arrive_by_reference(pool):
    chunks = list(pool.stream("chunks", {"count": 4, "n": MIB // 8}))
    assert [float(c[0]) for c in chunks] == [0.0, 1.0, 2.0, 3.0]
    assert all(not c.flags.writeable and _inode(c) is not None for c in chunks)
    assert len({_inode(c) for c in chunks}) == 4  # each held: each its own segment


def test_map_items_travel_in_the_frame_as_before(pool):
    x = shared.zeros(MIB // 8)
    [seen] = pool.map("describe", [{"x": x}])
    assert seen["writeable"] is True and x.flags.writeable


@pytest.mark.parametrize("threads", [2])
def test_a_worker_with_several_threads_sends_by_reference_too(threads):
    class Threaded(Shared):
        thread_safe = True

    with Pool(Threaded, size=1, threads_per_worker=threads) as pool:
        first = pool.execute("make", {"n": MIB // 8, "value": 5.0})
        assert not first.flags.writeable and _inode(first) is not None and (first == 5.0).all()
        x = shared.zeros(MIB // 8)
        assert pool.execute("describe", {"x": x})["inode"] == _inode(x)


def test_small_arrays_and_bad_shapes():
    small = shared.empty(SHARE_THRESHOLD // 8 - 1)
    assert small.base is None and _inode(small) is None  # an ordinary array: it travels in the frame
    big = shared.zeros((3, SHARE_THRESHOLD // 8), dtype="f8")
    assert big.shape == (3, SHARE_THRESHOLD // 8) and big.dtype == np.float64 and (big == 0).all()
    assert big.flags.c_contiguous and big.flags.writeable and _inode(big) is not None
    assert shared.zeros(SHARE_THRESHOLD, dtype="u1").dtype == np.uint8
    with pytest.raises(ValueError):
        shared.empty((-1, 4))
    with pytest.raises(TypeError):
        shared.empty(SHARE_THRESHOLD, dtype=object)


def test_a_reused_segment_is_zeroed_for_zeros():
    first = shared.empty(MIB, dtype="u1")
    first.fill(7)
    inode = _inode(first)
    del first
    again = shared.zeros(MIB, dtype="u1")
    assert _inode(again) == inode and not again.any()


def test_a_worker_s_memory_counts_the_segments_its_arrays_hold(pool):
    assert pool.execute("hold_own", {"n": 400 * MIB}) == 0  # untouched pages, yet its own
    assert pool.stats()["worker_info"][0]["rss"] >= 400 * MIB
    pool.execute("drop")
    assert pool.stats()["worker_info"][0]["rss"] < 100 * MIB


def test_memory_limit_recycles_a_worker_whose_arrays_hold_too_much():
    with Pool(Shared, size=1, memory_limit_mb=150) as pool:
        worker = pool.stats()["worker_info"][0]["pid"]
        assert pool.execute("hold_own", {"n": 400 * MIB}) == 0
        assert _wait_for(lambda: pool.stats()["recycled"] == 1)
        assert pool.execute("hold_own", {"n": 8}) == 0 and pool.stats()["worker_info"][0]["pid"] != worker


def test_memory_limit_does_not_count_what_the_owner_holds():
    with Pool(Shared, size=1, memory_limit_mb=150) as pool:
        held = pool.execute("make", {"n": 400 * MIB // 8})  # the worker's array is gone; the owner holds the pages
        pool.execute("drop")
        stats = pool.stats()
        assert stats["recycled"] == 0 and stats["worker_info"][0]["rss"] < 150 * MIB
        del held


def _pids(pool) -> list[int]:
    return [w["pid"] for w in pool.stats()["worker_info"]]


def _kill_scenario() -> None:
    """Run in a process of its own (see the test below): no other pool's segments to count."""
    baseline = _segments(os.getpid())
    crashed = False
    with Pool(Shared, size=1) as pool:
        x = shared.zeros(64 * MIB // 8)
        assert pool.execute("hold", {"x": x}) == x.nbytes  # the worker holds the owner's array...
        worker = pool.stats()["worker_info"][0]["pid"]
        os.kill(worker, signal.SIGKILL)  # ...and dies holding it: it never clears its slot
        _wait_for(lambda: _pids(pool) not in ([worker], []))
        kept = pool.execute("make", {"n": 64 * MIB // 8, "value": 9.0})  # a replacement
        worker = pool.stats()["worker_info"][0]["pid"]
        os.kill(worker, signal.SIGKILL)  # dies while the owner holds what it lent
        _wait_for(lambda: _pids(pool) not in ([worker], []))
        try:
            for chunk in pool.stream("chunks", {"count": 10_000, "n": 16 * MIB // 8}):
                os.kill(pool.stats()["worker_info"][0]["pid"], signal.SIGKILL)  # mid-stream
                del chunk
        except SnakepitError as exc:
            crashed = exc.reason == "worker_crashed"
        intact = bool((kept == 9.0).all())
        replaced = pool.execute("describe", {"x": np.ones(4)})["sum"] == 4.0
    del x, kept
    gc.collect()
    released = _wait_for(lambda: _segments(os.getpid()) == (0, 0), timeout=10)
    if not released:
        os.system(f"grep snakepit /proc/{os.getpid()}/maps >&2; ls -l /proc/{os.getpid()}/fd >&2")
    print(
        json.dumps(
            {
                "baseline": baseline,
                "after": _segments(os.getpid()),
                "released": released,
                "crashed": crashed,
                "intact": intact,
                "replaced": replaced,
            }
        )
    )


def test_nothing_outlives_a_worker_killed_holding_or_lending_shared_arrays():
    run = run_scenario("test_shared_arrays._kill_scenario")
    assert run["crashed"] and run["intact"] and run["replaced"]
    assert run["baseline"] == [0, 0] and run["released"], run["stderr"]


def test_nothing_outlives_an_owner_killed_mid_stream_of_shared_arrays(tmp_path):
    # It lent the worker an array, and receives arrays the worker allocated.
    kill_owner_streaming(tmp_path, "test_shared_arrays", f'pool.execute("hold", {{"x": shared.zeros({32 * MIB})}})', "Shared")


@pytest.mark.parametrize("lent", [False, True])
def test_a_closed_connection_frees_only_the_deliveries_it_still_holds(lent):
    """A slot delivered over a connection that closed is cleared -- unless its receiver had
    dropped it and it was delivered again since, over another connection."""
    from snakepit._backends.process import segments

    mine = segments.Segments()
    source = shared.zeros(MIB, dtype="u1") if lent else np.ones(MIB, dtype="u1")
    first, second = segments.Attachments(mine), segments.Attachments(mine)
    first.share("pickle", b"", [memoryview(source)])
    first.deliver("connection A")
    [(_, segment, _, slot)] = first.placed
    segment.map[slot] = 0  # its receiver dropped it
    second.share("pickle", b"", [memoryview(source)])  # placed for a call not sent yet
    assert second.placed[0][1] is segment and second.placed[0][3] == slot  # the same segment, the same slot
    segments.forget("connection A")
    assert segment.map[slot] == 1
    second.deliver("connection B")
    segments.forget("connection A")
    assert segment.map[slot] == 1  # B's receiver holds it
    segments.forget("connection B")
    assert segment.map[slot] == 0
    mine.close()


def test_a_forked_child_allocates_memory_of_its_own_not_its_parent_s():
    cached = shared.empty(MIB, dtype="u1")
    inode = _inode(cached)
    del cached  # unused now: kept for reuse by this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.write(write, str(_inode(shared.empty(MIB, dtype="u1"))).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        child = int(answer.read())
    os.waitpid(pid, 0)
    mine = shared.empty(MIB, dtype="u1")  # the parent's own segment again, which the child must not have taken
    assert _inode(mine) == inode != child


def _too_much_scenario() -> None:
    """Run in a process of its own: it lowers its own limits. Had the check gone, the OOM killer
    would end this process, not another (its score says so)."""
    import resource

    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    with open("/proc/meminfo") as f:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    outcomes = {}

    def outcome(nbytes: int) -> str:
        try:
            shared.empty(nbytes, dtype="u1")
        except Exception as exc:
            return type(exc).__name__
        return "allocated"

    outcomes["beyond_the_machine"] = outcome(meminfo["MemTotal"] + meminfo["SwapTotal"] + (1 << 30))
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + (256 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
    outcomes["beyond_the_address_space"] = outcome(1 << 30)
    print(json.dumps(outcomes))


def test_more_shared_memory_than_there_is_is_a_memory_error():
    # Not the OOM killer (the pages are allocated at once), nor an OSError: what numpy.empty raises.
    run = run_scenario("test_shared_arrays._too_much_scenario")
    assert run["beyond_the_machine"] == run["beyond_the_address_space"] == "MemoryError", run

"""Chaos: mixed traffic from many threads while workers are SIGKILLed at random.

Every call must end with a result or a SnakepitError (never another exception, never a hang),
the pool must end with ``size`` healthy workers, and after close() no process may be left (the
suite-wide fixture checks that last part).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import Counter

from helpers import Toolbox, wait_for

from snakepit import HALT, Pool, SnakepitError

EXPECTED = {"worker_crashed", "session_worker_unavailable", "tool_exception", "worker_busy", "timeout", "queue_timeout"}


def test_chaos_mixed_calls_while_workers_die():
    rng = random.Random(1234)
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    with Pool(Toolbox, size=3, cancel_grace=0.3, kill_grace=0.3, queue_timeout=5) as pool:

        def client(index: int) -> None:
            local: Counter[str] = Counter()
            session = f"session-{index}"
            calls = [
                lambda: pool.execute("add", {"a": 1, "b": index}, timeout=5) == 1 + index,
                lambda: pool.execute("state", session_id=session, affinity="strict_queue", timeout=5)["pid"] > 0,
                lambda: pool.execute("state", session_id=session, affinity="hint", timeout=5)["pid"] > 0,
                lambda: pool.execute("add", {"a": 2}, session_id=session, affinity="strict_fail_fast", timeout=5) == 3,
                lambda: [c["number"] for c in pool.stream("count", {"n": 50}, timeout=5)] == list(range(50)),
                lambda: pool.execute_stream("guarded", {"delay": 0.001}, lambda c: HALT if c == 20 else None, timeout=5).halted,
                lambda: pool.execute("fail", timeout=5),
                lambda: pool.execute("sleep", {"seconds": 0.05}, timeout=5) == 0.05,
            ]
            while not stop.is_set():
                call = calls[rng.randrange(len(calls))]
                try:
                    ok = call()
                    local["ok" if ok is not False else "wrong_result"] += 1
                except SnakepitError as exc:
                    local[exc.reason] += 1
                except BaseException as exc:
                    with lock:
                        unexpected.append(exc)
            with lock:
                outcomes.update(local)

        def killer() -> None:
            while not stop.wait(0.25):
                victims = [w["pid"] for w in pool.stats()["worker_info"]]
                if victims:
                    try:
                        os.kill(rng.choice(victims), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        chaos = threading.Thread(target=killer)
        for t in (*threads, chaos):
            t.start()
        stop.wait(6)  # the test's duration, not a synchronisation
        stop.set()
        for t in (*threads, chaos):
            t.join(30)
        assert not any(t.is_alive() for t in (*threads, chaos)), "a caller hung"

        assert not unexpected, unexpected[:3]
        assert outcomes["wrong_result"] == 0
        assert set(outcomes) - {"ok"} <= EXPECTED, outcomes
        assert outcomes["ok"] > 100 and outcomes["worker_crashed"] > 0, outcomes
        stats = pool.stats()
        assert stats["restarts"] >= 10

        wait_for(lambda: pool.stats()["workers"] == 3, timeout=15)
        for _ in range(6):
            assert pool.execute("add", {"a": 1}) == 2

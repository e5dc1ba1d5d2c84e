"""``worker_env`` as a callable: an environment per worker slot, kept by replacements."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from helpers import Toolbox, wait_for

from snakepit import Pool, SnakepitError


def _slot_envs(pool: Pool) -> dict[int, str]:
    return {w["slot"]: psutil.Process(w["pid"]).environ().get("SNAKEPIT_TEST_VAR") for w in pool.stats()["worker_info"]}


def test_each_slot_has_its_environment_and_a_replacement_gets_it_again():
    with Pool(Toolbox, size=2, worker_env=lambda slot: {"SNAKEPIT_TEST_VAR": f"device-{slot}"}) as pool:
        assert _slot_envs(pool) == {0: "device-0", 1: "device-1"}
        state = pool.execute("state")
        slot = next(w["slot"] for w in pool.stats()["worker_info"] if w["pid"] == state["pid"])
        assert state["env"]["SNAKEPIT_TEST_VAR"] == f"device-{slot}"  # what the tool sees
        assert state["env"]["OMP_NUM_THREADS"] == "1"  # the shared environment still applies
        first = next(w for w in pool.stats()["worker_info"] if w["slot"] == 1)
        os.kill(first["pid"], signal.SIGKILL)

        def replaced() -> bool:  # both conditions on one snapshot: between two, the replacement may not be up yet
            pids = {w["pid"] for w in pool.stats()["worker_info"]}
            return len(pids) == 2 and first["pid"] not in pids

        wait_for(replaced, timeout=15)
        assert _slot_envs(pool) == {0: "device-0", 1: "device-1"}
        # Environments differ from the template's: these workers start cold.
        assert {psutil.Process(w["pid"]).ppid() for w in pool.stats()["worker_info"]} == {os.getpid()}


def test_slots_with_nothing_of_their_own_are_forked_by_the_template():
    with Pool(Toolbox, size=2, worker_env=lambda slot: {}) as pool:
        parents = {psutil.Process(w["pid"]).ppid() for w in pool.stats()["worker_info"]}
        assert len(parents) == 1 and os.getpid() not in parents


def _boom(slot: int) -> dict:
    raise RuntimeError("no device")


@pytest.mark.parametrize(
    "worker_env, message",
    [
        (_boom, "no device"),
        (lambda slot: ["A=1"], "worker_env(0)"),
        (lambda slot: {"A": 1}, "str to str"),
        ({"A": None}, "str to str"),
    ],
)
def test_a_bad_worker_env_is_refused_by_the_constructor(worker_env, message):
    with pytest.raises(SnakepitError) as caught:
        Pool(Toolbox, size=2, worker_env=worker_env)
    assert caught.value.reason == "invalid_config" and message in caught.value.message


def test_ray_refuses_a_per_worker_environment():
    with pytest.raises(SnakepitError) as caught:
        Pool(Toolbox, size=1, backend="ray", worker_env=lambda slot: {})
    assert caught.value.reason == "invalid_config" and "actor_options" in caught.value.message

"""Suite-wide guarantees: every test leaves no child process and no zombie behind."""

from __future__ import annotations

import time

import psutil
import pytest

from snakepit import Pool


def _children() -> list[psutil.Process]:
    """This process's descendants, but for a Ray instance's (a test session starts one, whose
    raylet starts and ends worker processes as it pleases)."""
    return [p for p in psutil.Process().children(recursive=True) if not _is_ray(p)]


def _is_ray(process: psutil.Process) -> bool:
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return "ray::" in line or "/ray/" in line or "raylet" in line or "gcs_server" in line


@pytest.fixture(autouse=True)
def no_leaked_processes():
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 5.0
    leaked: list[psutil.Process] = []
    while time.monotonic() < deadline:
        leaked = [p for p in _children() if p.pid not in before]
        if not leaked:
            return
        time.sleep(0.02)
    descriptions = []
    for p in leaked:
        try:
            descriptions.append(f"{p.pid} {p.status()} {p.cmdline()[:3]}")
        except psutil.Error:
            continue
    for p in leaked:  # killed and reaped: a leak fails its own test, never the next one
        try:
            p.kill()
            p.wait(timeout=5)
        except psutil.Error:
            pass
    if descriptions:
        pytest.fail(f"test leaked child processes: {descriptions}")


@pytest.fixture(scope="module")
def pool():
    """A shared two-worker pool of the test adapter, for tests that leave it healthy."""
    from helpers import Toolbox

    with Pool(Toolbox, size=2, start_timeout=30) as shared:
        yield shared


@pytest.fixture(scope="module")
def single_pool():
    """One worker: calls run strictly one after another, so ordering is observable."""
    from helpers import Toolbox

    with Pool(Toolbox, size=1, start_timeout=30) as shared:
        yield shared

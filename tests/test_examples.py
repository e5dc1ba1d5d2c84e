"""Every script in ``examples/`` runs, at small sizes, and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Each example with small sizes, and what its output must contain.
RUNS = {
    "batch_inference.py": (
        ["--rows", "4000", "--epochs", "3", "--workers", "2"],
        [r"epoch +3/3 +loss", r"scored 4,000 rows .* accuracy 0\.9"],
    ),
    "chat_sessions.py": (
        ["--users", "4", "--turns", "3"],
        [
            r"user-3: worker \d+, last reply \(3 turns so far\)",
            "the worker died: worker_crashed",
            "lost with it: session_worker_unavailable",
            r"\(1 turns so far\)",
        ],
    ),
    "async_service.py": (["--port", "0", "--clients", "20", "--tokens", "5"], [r"20 clients received 100 tokens"]),
    "grpc_server.py": (
        ["--address", "127.0.0.1:0", "--run-client"],
        [
            r"serving 2 tools at 127\.0\.0\.1:\d+",
            r"add\(2, 3\) = 5",
            r"map: \[0, 2, 4, 6, 8\]",
            "refused: validation/invalid_arguments",
        ],
    ),
    "shared_arrays.py": (["--megabytes", "16"], [r"blurred 4 frames \(16 MiB each way\)", r"streamed 16 MiB of frames"]),
    "ray_cluster.py": (["--documents", "100"], [r"featurized 100 documents on 2 actors", r"crawled page 3/3"]),
}


def test_every_example_is_run():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(RUNS) | {"grpc_client.py"}  # run by grpc_server.py


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(RUNS))
def test_an_example_runs(name, tmp_path):
    args, expected = RUNS[name]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the Ray example starts a local Ray of its own
    command = [sys.executable, str(EXAMPLES / name), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for pattern in expected:
        assert re.search(pattern, done.stdout), (pattern, done.stdout)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_an_example_takes_help(name, tmp_path):
    """examples/README.md promises `--help` for each: a usage line and the docstring's whole
    first paragraph, not a sentence cut at its first line break."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"usage: {name}")
    first_paragraph = " ".join((EXAMPLES / name).read_text().split('"""')[1].split("\n\n")[0].split())
    assert first_paragraph in " ".join(done.stdout.split())

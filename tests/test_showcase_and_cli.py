"""The showcase adapter, the demo and the command line, as a newcomer meets them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from snakepit import HALT, Pool, SnakepitError
from snakepit._demo import run as run_demo
from snakepit.adapters.showcase import ShowcaseAdapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def showcase():
    with Pool(ShowcaseAdapter, size=2) as pool:
        yield pool


def test_showcase_tools(showcase):
    names = {spec.name for spec in showcase.tools()}
    assert {"progress_stream", "numbered_stream", "chunked_stream", "train", "dataset", "fail", "endless"} <= names
    assert showcase.execute("add", {"a": 2, "b": 3}) == 5
    assert showcase.execute("ping")["pong"] is True


def test_showcase_streams(showcase):
    progress = list(showcase.stream("progress_stream", {"steps": 4, "delay": 0}))
    assert [p["step"] for p in progress] == [1, 2, 3, 4] and progress[-1]["percent"] == 100.0
    numbers = showcase.execute("numbered_stream", {"count": 3})
    assert numbers[-1] == {"number": 2, "is_last": True}

    parts = []
    result = showcase.execute_stream("chunked_stream", {"parts": 2}, parts.append)
    assert parts[-1] == {"type": "complete", "parts": 2}
    assert not result.synthetic_final and result.metadata == {"parts": 2}

    epochs = []
    result = showcase.execute_stream("train", {"epochs": 3, "delay": 0}, epochs.append)
    assert [e["epoch"] for e in epochs[:-1]] == [1, 2, 3]
    assert epochs[0]["loss"] > epochs[2]["loss"] and epochs[-1]["type"] == "complete"
    assert result.metadata["best_loss"] == epochs[2]["loss"]

    rows = sum(len(chunk["ids"]) for chunk in showcase.stream("dataset", {"rows": 2_500, "chunk_size": 1_000}))
    assert rows == 2_500


def test_showcase_failures_and_cancellation(showcase):
    with pytest.raises(SnakepitError) as info:
        showcase.execute("fail", {"message": "on purpose"})
    assert info.value.reason == "tool_exception" and "on purpose" in info.value.message
    seen = []
    with pytest.raises(SnakepitError):
        showcase.execute_stream("fail_midway", {"after": 2}, seen.append)
    assert seen == [0, 1]
    result = showcase.execute_stream("endless", {"delay": 0}, lambda chunk: HALT if chunk["tick"] == 9 else None)
    assert result.halted and result.chunks == 10


def test_demo_runs_and_reports_figures():
    out = io.StringIO()
    figures = run_demo(quick=True, out=out)
    text = out.getvalue()
    for heading in (
        "Training progress",
        "large dataset",
        "Chunk throughput",
        "Cancellation",
        "Errors are data",
        "Sessions",
        "map:",
        "asyncio",
    ):
        assert heading in text
    assert figures["chunks_per_s"] > 0 and figures["dataset_rows_per_s"] > 0 and figures["map_per_s"] > 0
    assert "(same worker: True)" in text
    assert "timeout=0.5: [timeout/timeout]" in text and "on the same worker (restarts: 0)" in text
    assert figures["stats"]["errors"] == 4 and figures["stats"]["restarts"] == 0  # 3 error examples and the timeout


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakepit", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=check
    )


def test_cli_call_tools_and_errors():
    assert json.loads(_cli("call", "showcase", "add", '{"a": 2, "b": 3}').stdout) == 5
    lines = _cli("call", "showcase", "chunked_stream", '{"parts": 2}', "--stream").stdout.splitlines()
    assert [json.loads(line) for line in lines][-1] == {"type": "complete", "parts": 2}
    assert "numbered_stream(" in _cli("tools", "showcase").stdout
    failed = _cli("call", "showcase", "fail", check=False)
    assert failed.returncode == 1 and "tool_exception" in failed.stderr and "RuntimeError" in failed.stderr
    bad = _cli("call", "showcase", "add", "not json", check=False)
    assert bad.returncode == 2


def test_cli_prints_results_json_cannot_hold_as_it_can():
    done = subprocess.run(
        [sys.executable, "-m", "snakepit", "call", "helpers:Toolbox", "tuple_keys"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"(1, 2)": 3, "nested": [{"(3,)": "{4, 5}"}]}


def test_stream_throughput_benchmark_runs_end_to_end(tmp_path):
    """The benchmark script itself works (tiny sizes; figures are not asserted here).

    It runs in its own interpreter: multiprocessing's spawn leaves a resource tracker behind.
    """
    out = tmp_path / "out.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.stream_throughput", "--chunks", "2000", "--repeats", "1", "--json", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    payload = json.loads(out.read_text())
    assert payload["chunks"] == 2000
    assert set(payload["median_chunks_per_s"]) == {
        "snakepit execute_stream",
        "snakepit stream()",
        "multiprocessing.Pipe",
        "raw os.pipe + msgpack",
    }
    assert all(rate > 0 for rate in payload["median_chunks_per_s"].values())


def test_cli_version_names_the_distribution():
    import snakepit

    assert _cli("--version").stdout.strip() == f"snakepit-pool {snakepit.__version__}"


def test_serving_without_the_grpc_extra_says_what_to_install():
    """Without grpc, serve() is invalid_config naming the extra, and so is `snakepit serve`; a
    Client import says it too (grpc hidden from a fresh interpreter)."""
    script = (
        "import sys; sys.modules['grpc'] = None\n"
        "from snakepit import Pool, ValidationError\n"
        "from snakepit.adapters.showcase import ShowcaseAdapter\n"
        "with Pool(ShowcaseAdapter, size=1) as pool:\n"
        "    try:\n"
        "        pool.serve('127.0.0.1:0')\n"
        "    except ValidationError as error:\n"
        "        print(error.reason, error.message)\n"
        "try:\n"
        "    from snakepit.grpc import Client\n"
        "except ModuleNotFoundError as error:\n"
        "    print('client:', error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("invalid_config ") and "pip install 'snakepit-pool[grpc]'" in lines[0]
    assert lines[1].startswith("client: ") and "pip install 'snakepit-pool[grpc]'" in lines[1]

"""Prometheus metrics (the metrics extra): scraped over HTTP from a real pool, parsed with
prometheus_client's own parser, and compared with the calls made."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import Toolbox, wait_for

from snakepit import Pool, SnakepitError

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample: (its name, its labels) -> its value; each family named once."""
    samples: dict[tuple[str, frozenset], float] = {}
    names = []
    for family in text_string_to_metric_families(text):
        names.append(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    assert len(names) == len(set(names)), names
    return samples


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={} if token is None else {"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(url: str, token: str | None = None) -> dict[tuple[str, frozenset], float]:
    status, text = _get(url, token)
    assert status == 200, text
    return _parse(text)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def has(samples: dict, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples


def test_the_scraped_metrics_count_the_calls_made():
    with Pool(Toolbox, size=2, timeout=60) as pool:
        server = pool.serve_metrics("127.0.0.1:0", label="toolbox")
        assert server.address == f"127.0.0.1:{server.port}" and server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        for a in range(3):
            assert pool.execute("add", {"a": a}) == a + 1
        assert asyncio.run(pool.aexecute("add", {"a": 5})) == 6
        with pytest.raises(SnakepitError):
            pool.execute("fail")
        with pytest.raises(SnakepitError) as timed_out:
            pool.execute("sleep", {"seconds": 30}, timeout=0.5)
        assert timed_out.value.reason == "timeout"
        with pytest.raises(SnakepitError):
            pool.execute("no_such_tool")
        assert len(list(pool.stream("stream_values", {"values": [1, 2, 3, 4]}))) == 4

        def stop(data: object) -> None:
            raise KeyError("the caller's own")

        with pytest.raises(KeyError):
            pool.execute_stream("stream_values", {"values": [1]}, stop)
        assert list(pool.map("add", [{"a": i} for i in range(10)])) == list(range(1, 11))
        results = list(pool.map("fail", [{}, {}], return_exceptions=True))
        assert all(isinstance(result, SnakepitError) for result in results)

        wait_for(lambda: pool.stats()["busy"] == 0)
        samples = scrape(server.url)
        stats = pool.stats()

    def calls(tool: str, outcome: str) -> float:
        return value(samples, "snakepit_calls_total", pool="toolbox", tool=tool, outcome=outcome)

    assert calls("add", "ok") == 4 + 10
    assert calls("fail", "tool_exception") == 1 + 2
    assert calls("sleep", "timeout") == 1
    assert calls("<unknown>", "tool_not_found") == 1
    assert calls("stream_values", "ok") == 1 and calls("stream_values", "cancelled") == 1
    assert calls("echo", "ok") == 0 and has(samples, "snakepit_calls_total", pool="toolbox", tool="echo", outcome="ok")
    assert value(samples, "snakepit_stream_chunks_total", pool="toolbox", tool="stream_values") >= 4

    # Histograms: single calls have a queue time; a map's items a run time only.
    def histogram(name: str, tool: str) -> tuple[list[float], float, float]:
        labels = {"pool": "toolbox", "tool": tool}
        buckets = sorted(
            (float(dict(key)["le"]), count)
            for (sample, key), count in samples.items()
            if sample == f"{name}_bucket" and {k: v for k, v in key if k != "le"} == labels
        )
        return [count for _, count in buckets], value(samples, f"{name}_count", **labels), value(samples, f"{name}_sum", **labels)

    queue_buckets, queue_count, queue_sum = histogram("snakepit_call_queue_seconds", "add")
    run_buckets, run_count, run_sum = histogram("snakepit_call_run_seconds", "add")
    assert (queue_count, run_count) == (4, 14)
    assert queue_buckets == sorted(queue_buckets) and queue_buckets[-1] == queue_count and len(queue_buckets) == 21
    assert run_buckets == sorted(run_buckets) and run_buckets[-1] == run_count
    assert queue_sum > 0 and run_sum > 0
    _, sleep_count, sleep_run = histogram("snakepit_call_run_seconds", "sleep")
    _, _, sleep_queue = histogram("snakepit_call_queue_seconds", "sleep")
    assert sleep_count == 1 and sleep_queue + sleep_run >= 0.5  # it ended at its deadline, not before
    assert histogram("snakepit_call_queue_seconds", "<unknown>")[1] == 0  # it never had a worker

    # What stats() counts, read at the scrape.
    assert value(samples, "snakepit_requests_total", pool="toolbox") == stats["requests"] == 4 + 1 + 1 + 1 + 1 + 1 + 10 + 2
    assert value(samples, "snakepit_errors_total", pool="toolbox") == stats["errors"]
    assert value(samples, "snakepit_timeouts_total", pool="toolbox") == 1
    assert value(samples, "snakepit_telemetry_dropped_total", pool="toolbox") == 0
    assert value(samples, "snakepit_size", pool="toolbox") == 2
    assert value(samples, "snakepit_serving", pool="toolbox") == 1
    states = {
        state: value(samples, "snakepit_workers", pool="toolbox", state=state)
        for state in ("starting", "idle", "busy", "draining", "stopping", "dead")
    }
    assert sum(states.values()) >= 2 and states["busy"] == 0
    assert has(samples, "snakepit_worker_deaths_total", pool="toolbox", cause="segfault")
    assert has(samples, "snakepit_recycled_total", pool="toolbox", reason="max_requests")
    for name in (
        "snakepit_waiting",
        "snakepit_sessions",
        "snakepit_quarantined_slots",
        "snakepit_queue_timeouts_total",
        "snakepit_pool_saturated_total",
        "snakepit_restarts_total",
        "snakepit_hung_total",
        "snakepit_retries_total",
        "snakepit_queued_total",
        "snakepit_available",
        "snakepit_busy",
    ):
        assert has(samples, name, pool="toolbox"), name


def test_deaths_by_cause_are_counted():
    with Pool(Toolbox, size=1) as pool:
        metrics = pool.enable_metrics()
        with pytest.raises(SnakepitError):
            pool.execute("crash", {"code": 3})
        wait_for(lambda: pool.stats()["deaths_by_cause"] == {"exit": 1})
        samples = _parse(prometheus_client.generate_latest(metrics.registry).decode())
    label = metrics.label
    assert value(samples, "snakepit_worker_deaths_total", pool=label, cause="exit") == 1
    assert value(samples, "snakepit_calls_total", pool=label, tool="crash", outcome="worker_crashed") == 1


def test_calls_before_metrics_are_enabled_are_not_recorded():
    with Pool(Toolbox, size=1) as pool:
        assert pool._runner.meter is None  # nothing measures calls: CallRunner.context's one check
        pool.execute("add", {"a": 1})
        assert list(pool.map("add", [{"a": 1}])) == [2]
        metrics = pool.enable_metrics()
        assert pool.enable_metrics() is metrics
        samples = _parse(prometheus_client.generate_latest(metrics.registry).decode())
        assert value(samples, "snakepit_calls_total", pool=metrics.label, tool="add", outcome="ok") == 0
        assert value(samples, "snakepit_requests_total", pool=metrics.label) == 2  # stats() counts from the start
        pool.execute("add", {"a": 1})
        samples = _parse(prometheus_client.generate_latest(metrics.registry).decode())
        assert value(samples, "snakepit_calls_total", pool=metrics.label, tool="add", outcome="ok") == 1
        with pytest.raises(SnakepitError) as info:
            pool.enable_metrics("another-name")
        assert info.value.reason == "invalid_config"


def test_two_pools_in_one_process_keep_their_own_labels():
    registry = prometheus_client.CollectorRegistry()
    with Pool(Toolbox, size=1) as first, Pool(Toolbox, size=1) as second:
        one, two = first.serve_metrics("127.0.0.1:0"), second.serve_metrics("127.0.0.1:0", label="second")
        label = first.enable_metrics().label
        assert label.startswith("pool-") and label != "second"
        first.execute("add", {"a": 1})
        for _ in range(2):
            second.execute("add", {"a": 1})
        for served, name, calls in ((one, label, 1), (two, "second", 2)):
            samples = scrape(served.url)
            assert value(samples, "snakepit_calls_total", pool=name, tool="add", outcome="ok") == calls
            assert {dict(key[1]).get("pool") for key in samples} == {name}
        # One registry for both (the application's own): each metric one family, a series per pool.
        first.enable_metrics(registry=registry)
        second.enable_metrics(registry=registry)
        second.enable_metrics(registry=registry)  # again: nothing
        samples = _parse(prometheus_client.generate_latest(registry).decode())
        assert value(samples, "snakepit_calls_total", pool=label, tool="add", outcome="ok") == 1
        assert value(samples, "snakepit_calls_total", pool="second", tool="add", outcome="ok") == 2
        with Pool(Toolbox, size=1) as third:
            with pytest.raises(SnakepitError) as info:
                third.enable_metrics("second", registry=registry)
            assert info.value.reason == "invalid_config" and "second" in info.value.message
        first.close()  # a closed pool's series leave the registries it shared
        samples = _parse(prometheus_client.generate_latest(registry).decode())
        assert {dict(key[1]).get("pool") for key in samples} == {"second"}


def test_off_loopback_a_scrape_needs_the_token():
    with Pool(Toolbox, size=1) as pool:
        with pytest.raises(SnakepitError) as info:
            pool.serve_metrics("0.0.0.0:0")
        assert info.value.reason == "invalid_config" and "token" in info.value.message
        with pytest.raises(SnakepitError) as info:
            pool.serve_metrics("127.0.0.1:0", token="")
        assert info.value.reason == "invalid_config"
        with pool.serve_metrics("0.0.0.0:0", token="s3cret") as server:
            url = f"http://127.0.0.1:{server.port}/metrics"
            assert _get(url)[0] == 401
            assert _get(url, "wrong")[0] == 401
            assert value(scrape(url, "s3cret"), "snakepit_size", pool=pool.enable_metrics().label) == 1
            assert _get(f"http://127.0.0.1:{server.port}/other", "s3cret")[0] == 404
        with pool.serve_metrics("0.0.0.0:0", insecure=True) as server:
            assert _get(f"http://127.0.0.1:{server.port}/metrics")[0] == 200
        with pool.serve_metrics("127.0.0.1:0", token="s3cret") as server:  # a token on loopback holds too
            assert _get(server.url)[0] == 401


def test_a_port_in_use_is_refused_at_once():
    with Pool(Toolbox, size=1) as pool, socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SnakepitError) as info:
            pool.serve_metrics(f"127.0.0.1:{port}")
        assert info.value.reason == "invalid_config" and str(port) in info.value.message
        with pool.serve_metrics("127.0.0.1:0") as server, pytest.raises(SnakepitError):
            pool.serve_metrics(server.address)  # nor another pool's (or its own) endpoint
        assert time.monotonic() - started < 25


def test_closing_the_pool_stops_its_metrics_server():
    pool = Pool(Toolbox, size=1).start()
    server = pool.serve_metrics("127.0.0.1:0")
    assert _get(server.url)[0] == 200
    pool.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=10)
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", server.port))
    server.stop()  # again: nothing
    with pytest.raises(SnakepitError) as info:
        pool.serve_metrics("127.0.0.1:0")
    assert info.value.reason == "pool_closed"


def test_without_prometheus_client_enabling_metrics_says_what_to_install():
    """prometheus_client is imported only by a pool whose metrics are enabled; hidden, enabling
    them is invalid_config naming the extra."""
    script = (
        "import sys\n"
        "from snakepit import Pool, ValidationError\n"
        "from snakepit.adapters.showcase import ShowcaseAdapter\n"
        "with Pool(ShowcaseAdapter, size=1) as pool:\n"
        "    pool.execute('add', {'a': 1})\n"
        "    print('prometheus_client' in sys.modules)\n"
        "    sys.modules['prometheus_client'] = None\n"
        "    try:\n"
        "        pool.serve_metrics('127.0.0.1:0')\n"
        "    except ValidationError as error:\n"
        "        print(error.reason, error.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "False"
    assert lines[1].startswith("invalid_config ") and "pip install 'snakepit-pool[metrics]'" in lines[1]


def test_the_command_line_serves_metrics_beside_the_pool():
    pytest.importorskip("grpc")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakepit",
            "serve",
            "showcase",
            "--size",
            "1",
            "--address",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "SNAKEPIT_TOKEN": "cli-token"},
    )
    try:
        banner = server.stdout.readline()
        assert banner.startswith("serving showcase"), banner + server.stderr.read()
        metrics = server.stdout.readline().split()
        assert metrics[:2] == ["metrics", "on"], metrics
        assert _get(metrics[2])[0] == 401
        samples = scrape(metrics[2], "cli-token")
        assert value(samples, "snakepit_size", pool="pool-1") == 1
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

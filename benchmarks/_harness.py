"""Shared plumbing for benchmark scripts: repeat, take medians, print a table with ratios."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata


def interleaved(repeats: int, contenders: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run every contender once per round, ``repeats`` rounds, so noise hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, measure in contenders.items():
            samples[name].append(measure())
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(
    title: str,
    unit: str,
    rows: Sequence[tuple[str, float]],
    *,
    reference: str,
    higher_is_better: bool = True,
    reference_vs_each: bool = False,
    ratio_header: str | None = None,
) -> None:
    """One row per contender: its median and its ratio to ``reference`` (>1: better than it),
    or with ``reference_vs_each`` the reference's ratio to it (>1: the reference is better)."""
    ref = dict(rows)[reference]
    width = max(len(name) for name, _ in rows)
    header = ratio_header or (f"{reference} vs it" if reference_vs_each else f"vs {reference}")
    print(f"\n{title}")
    print(f"{'contender'.ljust(width)}  {unit:>14}  {header:>20}")
    for name, value in rows:
        ratio = value / ref if higher_is_better else ref / value
        if reference_vs_each:
            ratio = 1 / ratio
        print(f"{name.ljust(width)}  {value:>14,.1f}  {ratio:>19.2f}x")


def print_curve(
    title: str, point: str, rows: Sequence[tuple[str, Mapping[str, Sequence[float]]]], *, digits: int = 1
) -> dict[str, dict[str, dict[str, float | None]]]:
    """A scaling curve, one row per point and one column per quantity: the median over the
    repeats, their range, and the median's ratio to the first point's (>1: larger there, for
    better or worse). Returns the same figures as data, for ``--json``."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    first = rows[0][1]
    for label, columns in rows:
        table[label] = {}
        for column, values in columns.items():
            median = statistics.median(values)
            reference = statistics.median(first[column]) if column in first else 0.0
            ratio = median / reference if reference else None  # None: no first point to compare with
            table[label][column] = {"median": median, "min": min(values), "max": max(values), "ratio": ratio}

    def cell(f: dict[str, float | None]) -> str:
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        return f"{f['median']:,.{digits}f} ({f['min']:,.{digits}f}-{f['max']:,.{digits}f}) {ratio}"

    cells = {label: {column: cell(f) for column, f in figures.items()} for label, figures in table.items()}
    headers = list(dict.fromkeys(column for _, columns in rows for column in columns))
    widths = {h: max([len(h)] + [len(c[h]) for c in cells.values() if h in c]) for h in headers}
    first_width = max(len(point), *(len(label) for label in table))
    print(f"\n{title}")
    print(f"{point.ljust(first_width)}  " + "  ".join(h.rjust(widths[h]) for h in headers))
    for label, row in cells.items():
        print(f"{label.ljust(first_width)}  " + "  ".join(row.get(h, "-").rjust(widths[h]) for h in headers))
    return table


ALL_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def placements() -> dict[str, tuple[set[int] | None, set[int] | None]]:
    """Owner and worker CPU sets per placement: the scheduler's choice, then (with two CPUs)
    owner and workers on one core, and on two. Which cores they share changes a round trip
    severalfold, so a figure that must hold on every such machine is the worst of these."""
    cpus = sorted(ALL_CPUS)
    chosen: dict[str, tuple[set[int] | None, set[int] | None]] = {"unpinned": (None, None)}
    if len(cpus) >= 2:
        chosen["same core"] = ({cpus[0]}, {cpus[0]})
        chosen["other core"] = ({cpus[0]}, {cpus[1]})
    return chosen


def pin(workers: Sequence[int], owner_cpus: set[int] | None, worker_cpus: set[int] | None) -> None:
    """Every thread of this process (the threads it starts later inherit it) on ``owner_cpus``,
    the ``workers`` processes on ``worker_cpus``; None: all CPUs."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), owner_cpus or ALL_CPUS)
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    for pid in workers:
        os.sched_setaffinity(pid, worker_cpus or ALL_CPUS)


def piped_child(code: str) -> tuple[subprocess.Popen, int, int]:
    """``python -c code <read fd> <write fd>``: the child, and our ends of its two pipes (to it,
    from it)."""
    to_child_r, to_child = os.pipe()
    from_child, from_child_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", code, str(to_child_r), str(from_child_w)], pass_fds=(to_child_r, from_child_w))
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, to_child, from_child


def emit_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


def common_options(parser: argparse.ArgumentParser) -> None:
    """``--quick`` (a smoke run: small sizes, one repeat) and ``--json PATH``, for every benchmark."""
    parser.add_argument("--quick", action="store_true", help="small sizes and one repeat: checks that it runs, measures little")
    parser.add_argument("--json", help="also write the results here")


_LIBRARIES = ("snakepit", "msgspec", "cloudpickle", "psutil", "grpcio", "protobuf", "numpy", "ray", "loky")


def machine_facts() -> dict:
    """What a result depends on, so that two runs can be compared knowingly."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = platform.processor() or None
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "libraries": versions,
    }

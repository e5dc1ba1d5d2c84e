"""Shared plumbing for benchmark scripts: repeat, take medians, print a table with ratios."""

from __future__ import annotations

import json
import statistics
from typing import Callable, Sequence


def median_of(repeats: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [measure() for _ in range(repeats)]
    return statistics.median(samples), samples


def print_table(title: str, unit: str, rows: Sequence[tuple[str, float]], *, reference: str, higher_is_better: bool = True) -> None:
    """One row per contender: its median and its ratio to ``reference``."""
    ref = dict(rows)[reference]
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print(f"{'contender'.ljust(width)}  {unit:>14}  {'vs ' + reference:>20}")
    for name, value in rows:
        ratio = value / ref if higher_is_better else ref / value
        print(f"{name.ljust(width)}  {value:>14,.1f}  {ratio:>19.2f}x")


def emit_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)

"""Shared plumbing for benchmark scripts: repeat, take medians, print a table with ratios."""

from __future__ import annotations

import json
import statistics
from typing import Callable, Sequence


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
    title: str, unit: str, rows: Sequence[tuple[str, float]], *, reference: str, higher_is_better: bool = True,
    reference_vs_each: bool = False,
) -> None:
    """One row per contender: its median and its ratio to ``reference`` (>1: better than it),
    or with ``reference_vs_each`` the reference's ratio to it (>1: the reference is better)."""
    ref = dict(rows)[reference]
    width = max(len(name) for name, _ in rows)
    header = f"{reference} vs it" if reference_vs_each else f"vs {reference}"
    print(f"\n{title}")
    print(f"{'contender'.ljust(width)}  {unit:>14}  {header:>20}")
    for name, value in rows:
        ratio = value / ref if higher_is_better else ref / value
        if reference_vs_each:
            ratio = 1 / ratio
        print(f"{name.ljust(width)}  {value:>14,.1f}  {ratio:>19.2f}x")


def emit_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)

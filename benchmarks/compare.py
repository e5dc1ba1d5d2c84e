"""How the figures moved between two result files of ``python -m benchmarks --json``.

``python -m benchmarks.compare OLD.json NEW.json [--threshold PCT]`` prints, for every figure the
two runs share, its old and new value and the change. Whether a change is better depends on the
figure: ``*_us`` and seconds are better lower, rates (``*_per_s``, ``chunks/s``, GB/s) higher; the
verdict column says which way it went. Changes within ``--threshold`` percent (default 5) are
shown as ``~`` (this kind of machine is noisy: compare runs of the same machine kind).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

_LOWER_IS_BETTER = ("_us", "_s", "seconds", "_ms", "latency", "rss", "uss", "_mb")


def figures(tree: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a result tree, by its dotted path (raw samples are left out)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in ("samples", "machine"):
                continue
            yield from figures(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, float(tree)


def lower_is_better(path: str) -> bool:
    """By the figure's name, or the name of the table it is in (``round_trip_us.16 workers.
    1 caller p50.median``, ``loop_cpu_us_per_chunk.<contender>``): a rate is better higher,
    a time or a size lower."""
    if "per_s" in path:
        return False
    names = [name.lower() for name in path.split(".")]
    return any(name.endswith(_LOWER_IS_BETTER) or "_us_" in name or "cpu" in name for name in names) or any(
        word in names[-1] for word in ("p50", "p99", "time")
    )


def compare(old: dict, new: dict, threshold: float) -> list[tuple[str, float, float, float, str]]:
    before = dict(figures(old.get("results", old)))
    rows = []
    for path, value in figures(new.get("results", new)):
        if path not in before:
            continue
        previous = before[path]
        change = (value - previous) / previous * 100 if previous else 0.0
        if abs(change) < threshold:
            verdict = "~"
        else:
            better = (change < 0) if lower_is_better(path) else (change > 0)
            verdict = "better" if better else "WORSE"
        rows.append((path, previous, value, change, verdict))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--threshold", type=float, default=5.0, help="percent within which a change is noise")
    opts = parser.parse_args(argv)
    with open(opts.old) as f:
        old = json.load(f)
    with open(opts.new) as f:
        new = json.load(f)
    for label, run in (("old", old), ("new", new)):
        facts = run.get("machine", {})
        print(
            f"{label}: {facts.get('date', '?')}, {facts.get('cpus_usable', '?')} CPUs ({facts.get('cpu_model', '?')}), "
            f"Python {facts.get('python', '?')}, snakepit {facts.get('libraries', {}).get('snakepit', '?')}"
        )
    rows = compare(old, new, opts.threshold)
    if not rows:
        print("no figures in common")
        return 1
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure'.ljust(width)}  {'old':>14}  {'new':>14}  {'change':>8}")
    for path, previous, value, change, verdict in rows:
        print(f"{path.ljust(width)}  {previous:>14,.2f}  {value:>14,.2f}  {change:>+7.1f}%  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

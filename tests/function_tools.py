"""Plain functions served as tools by test_functions (importable by name, so they travel by name)."""

from __future__ import annotations

import os

IMPORTED_IN = os.getpid()  # the process that imported this module: the template, for a warm worker


def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


def countdown(n: int):
    yield from range(n, 0, -1)


def imported_in_parent() -> bool:
    """Whether this module was imported before this worker was forked (warm start)."""
    return os.getpid() != IMPORTED_IN


def load_model() -> dict:
    return {"name": "tiny", "pid": os.getpid()}


def predict(row: list[float], state: dict) -> str:
    return f"{state['name']}:{sum(row)}"


def _private() -> None:
    raise AssertionError("not a tool")


def divide(a: float, b: float) -> float:
    return a / b

"""Functions the Executor tests submit (importable by name: they travel by reference)."""

from __future__ import annotations

import os
import time

_initialized: list[object] = []


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def pid(_: object = None) -> int:
    return os.getpid()


def init(value: object) -> None:
    _initialized.append(value)


def initialized(_: object = None) -> list[object]:
    return list(_initialized)


def init_fails() -> None:
    raise RuntimeError("initializer failed")


def sleep(seconds: float, marker: str = "") -> float:
    if marker:
        open(marker, "w").close()
    time.sleep(seconds)
    return seconds


def crash() -> None:
    os._exit(3)


class Unloadable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)


def raise_unloadable() -> None:
    raise Unloadable(1, 2)


def missing(path: str) -> str:
    with open(path) as file:
        return file.read()


def raise_unimported() -> None:
    import executor_only_errors

    executor_only_errors.raise_it()

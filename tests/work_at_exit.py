"""Tools that leave work behind when their worker exits: a non-daemon thread and an executor's
job, each writing a file when done. An interpreter's exit waits for both."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from snakepit import BaseAdapter, tool

_executor = ThreadPoolExecutor(1)


def _write_later(path: str) -> None:
    time.sleep(0.5)
    Path(path).write_text("done")


class Background(BaseAdapter):
    @tool
    def leave_work(self, folder: str) -> None:
        _executor.submit(_write_later, f"{folder}/executor")
        threading.Thread(target=_write_later, args=(f"{folder}/thread",)).start()

"""An adapter whose module starts a thread when imported: a fork would copy it stopped."""

from __future__ import annotations

import os
import threading

from snakepit import BaseAdapter, tool

_stop = threading.Event()
threading.Thread(target=_stop.wait, daemon=True, name="started at import").start()


class Threaded(BaseAdapter):
    @tool
    def pid(self) -> int:
        return os.getpid()

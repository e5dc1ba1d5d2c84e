"""An adapter whose module imports numpy: the template imports it once for every worker."""

from __future__ import annotations

import os
import random
import time

import numpy

from snakepit import BaseAdapter, tool


class Draws(BaseAdapter):
    @tool
    def draw(self, wait: float = 0.0) -> dict:
        """Random numbers from the global generators, after ``wait`` (to hold the worker)."""
        time.sleep(wait)
        return {"pid": os.getpid(), "numpy": float(numpy.random.random()), "random": random.random()}

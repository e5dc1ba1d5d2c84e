"""What an ML worker looks like at start-up: a heavy import at the top of the adapter's module."""

from __future__ import annotations

import numpy

from snakepit import BaseAdapter, tool


class WithNumpy(BaseAdapter):
    def initialize(self) -> None:
        self.weights = numpy.ones(16)

    @tool
    def ping(self) -> float:
        return float(self.weights.sum())

"""An adapter whose tools take numpy arrays (its module imports numpy, so the annotation resolves)."""

from __future__ import annotations

import numpy

from snakepit import BaseAdapter, tool


class Arrays(BaseAdapter):
    @tool
    def total(self, values: numpy.ndarray, scale: float = 1.0) -> list:
        """The array's sum times ``scale``, with the type of the array received."""
        return [type(values).__name__, float(values.sum()) * scale]

"""Arrays in shared memory from the start: large results and arguments that cross with no copy.

A tool that returns or yields a big array, or an owner passing one, can allocate it here::

    from snakepit import shared

    @tool
    def render(self, n: int):
        image = shared.empty((n, n, 3), dtype="u1")  # raw bytes: dtype "u1"
        fill(image)
        return image  # delivered by reference: the owner maps these very pages

Sent (returned, yielded, or passed as an argument), such an array is not copied: the receiver
maps the pages it lies in, and gets it **read-only**; the array sent becomes read-only too, so a
value already delivered never changes under its receiver. Only a contiguous array lying in this
memory goes by reference (a slice of rows of it, say); anything else -- a non-contiguous view, an
array made elsewhere -- travels as before, copied once. The memory is reused or given back once
the arrays built on it are gone and every receiver has dropped what it was sent. A process
forked after allocating shares the pages of the arrays it inherited (writes show on both sides,
as with any shared memory); what it allocates itself is its own.

Arrays smaller than 256 KiB travel in the frame anyway: for them these are ordinary arrays, as
they are wherever memory cannot be shared (a worker of ``backend="ray"``, whose object store
carries large values itself; a system without ``memfd``). numpy is needed (imported at first use).
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex

from snakepit._protocol import SHARE_THRESHOLD

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["empty", "zeros"]

Shape = SupportsIndex | Sequence[SupportsIndex]

# How this process allocates shared bytes (``allocate(nbytes, zeroed)``), None where it cannot
# share; resolved at first use unless a backend said so first (a Ray actor: it cannot).
_allocate: Callable[[int, bool], memoryview] | None = None
_resolved = False


def empty(shape: Shape, dtype: npt.DTypeLike = float) -> np.ndarray[Any, Any]:
    """A new C-ordered array of ``shape`` and ``dtype`` in shared memory, its values unset (as
    ``numpy.empty``)."""
    return _array(shape, dtype, zeroed=False)


def zeros(shape: Shape, dtype: npt.DTypeLike = float) -> np.ndarray[Any, Any]:
    """A new C-ordered array of ``shape`` and ``dtype`` in shared memory, filled with zeros (as
    ``numpy.zeros``)."""
    return _array(shape, dtype, zeroed=True)


def _array(shape: Shape, dtype: npt.DTypeLike, zeroed: bool) -> np.ndarray[Any, Any]:
    try:
        import numpy as np
    except ImportError:
        raise ImportError("snakepit.shared makes numpy arrays: install numpy") from None
    kind = np.dtype(dtype)
    dims = (operator.index(shape),) if isinstance(shape, SupportsIndex) else tuple(map(operator.index, shape))
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    if kind.hasobject:
        raise TypeError(f"an array of {kind} holds references to objects, which cannot be shared")
    nbytes = math.prod(dims) * kind.itemsize
    allocate = _allocator()
    if allocate is None or nbytes < SHARE_THRESHOLD:
        return (np.zeros if zeroed else np.empty)(dims, kind)
    return np.ndarray(dims, kind, buffer=allocate(nbytes, zeroed))


def _allocator() -> Callable[[int, bool], memoryview] | None:
    global _allocate, _resolved
    if not _resolved:
        if hasattr(os, "memfd_create"):
            from snakepit._backends.process import segments

            _allocate = segments.allocate
        _resolved = True
    return _allocate


def _install(allocate: Callable[[int, bool], memoryview] | None) -> None:
    """Say how this process allocates shared bytes (None: it cannot share)."""
    global _allocate, _resolved
    _allocate, _resolved = allocate, True

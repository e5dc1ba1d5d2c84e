"""The process pool: workers, their supervision, checkout and the call protocol."""

from .calls import Stream
from .pool import Pool

__all__ = ["Pool", "Stream"]

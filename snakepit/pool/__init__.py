"""The process pool: workers, their supervision, checkout and the call protocol."""

from .exchange import Stream
from .pool import Pool
from .session import Session

__all__ = ["Pool", "Stream", "Session"]

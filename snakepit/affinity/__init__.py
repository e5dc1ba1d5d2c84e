"""Session affinity: the modes, the session store and the pure router that applies them."""

from .modes import Affinity, parse_affinity
from .router import Router, Ticket

__all__ = ["Affinity", "parse_affinity", "Router", "Ticket"]

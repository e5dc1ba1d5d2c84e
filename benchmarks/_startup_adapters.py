"""An adapter for the start-up benchmark, importable by name (so a template can import it once)."""

from __future__ import annotations

from snakepit import BaseAdapter, tool


class Bare(BaseAdapter):
    @tool
    def ping(self) -> int:
        return 1

"""An adapter whose module opens a file when imported: forked workers would share it (and a
worker drops the template's descriptors), so its workers start cold, each opening its own."""

from __future__ import annotations

import os

from snakepit import BaseAdapter, tool

LOG = open(os.environ["SNAKEPIT_TEST_LOG"], "a")  # noqa: SIM115 - held for the process's life


class Logging(BaseAdapter):
    @tool
    def log(self, line: str) -> str:
        LOG.write(line + "\n")
        LOG.flush()
        return os.readlink(f"/proc/self/fd/{LOG.fileno()}")

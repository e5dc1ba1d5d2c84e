"""A module whose @tool functions alone are tools (test_functions)."""

from __future__ import annotations

from snakepit import tool


@tool(name="double", description="twice the value", idempotent=True)
def twice(x: int) -> int:
    return 2 * x


def helper(x: int) -> int:
    """Public, but not marked: not a tool, since the module marks some."""
    return x

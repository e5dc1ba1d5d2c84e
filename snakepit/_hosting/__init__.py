"""Worker-side hosting of the user's tools, independent of how calls reach the worker."""

from snakepit._hosting.host import ToolHost

__all__ = ["ToolHost"]

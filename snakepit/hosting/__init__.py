"""Worker-side hosting of the user's tools, independent of how calls reach the worker."""

from .host import ToolHost

__all__ = ["ToolHost"]

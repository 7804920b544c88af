"""The tool-author SDK: a typed function plus ``@tool`` gives a frozen ``ToolSpec``.

This package must stay independent of the gateway (a test imports it alone and checks that
``gateway`` was not loaded), so adapters can be written and tested without a server.
"""

from tool_adapters.sdk.adapter import Adapter
from tool_adapters.sdk.context import ToolContext
from tool_adapters.sdk.errors import ToolError, ToolFailed, ToolRetry
from tool_adapters.sdk.spec import Effect, Runner, ToolSpec, tool

__all__ = [
    "Adapter",
    "Effect",
    "Runner",
    "ToolContext",
    "ToolError",
    "ToolFailed",
    "ToolRetry",
    "ToolSpec",
    "tool",
]

"""Errors a tool raises to tell the model what went wrong.

A tool's own errors are *results*: the gateway records them and hands ``code`` and ``message`` to
the model. Any other exception is a bug in the adapter and is reported as an internal error, so
only raise these for outcomes the model should hear about::

    ToolError(Exception)         base; .code: str; .message: str
     ├── ToolRetry   code "tool_retry"   — bad arguments, the model may fix them and call again
     └── ToolFailed  code "tool_failed"  — terminal, told to the model

The message is shown to the model verbatim: write it for the model, and keep secrets out of it.
"""

from __future__ import annotations


class ToolError(Exception):
    """Base class of every error a tool reports on purpose; ``str(err)`` is the message."""

    code: str = "tool_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ToolRetry(ToolError):
    """The arguments were wrong in a way the model can fix (e.g. unknown order id); it may retry."""

    code = "tool_retry"


class ToolFailed(ToolError):
    """The call cannot succeed (e.g. the account is closed); other arguments won't help."""

    code = "tool_failed"

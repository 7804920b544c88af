"""Errors of the agent worker.

    AgentError
     ├── GatewayError        the gateway answered 4xx/5xx (status, code, message) or was not
     │                       reachable (status 0, code "unreachable")
     ├── BackendError        the model backend failed (connection, protocol)
     └── TurnFailed          a user turn could not be finished (too many malformed steps, a
                             commit the gateway refused); its open gateway turn was cancelled
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    pass


class GatewayError(AgentError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    def as_payload(self) -> dict[str, Any]:
        """What the model is shown: the gateway's error code and message."""
        return {"error": {"code": self.code, "message": self.message}}


class BackendError(AgentError):
    pass


class TurnFailed(AgentError):
    pass

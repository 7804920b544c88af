"""τ²-bench's airline domain on Postgres: the agent's tools over τ²'s flights, users and
reservations, answering exactly as τ²'s reference environment does.

``tau2data`` loads τ²'s ``db.json`` into the tables and exports them back in its shape.
"""

from tool_adapters.airline.tools import ADAPTER

__all__ = ["ADAPTER"]

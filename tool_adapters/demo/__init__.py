"""A small shop on Postgres, the adapter of ``specgate demo`` and of the gateway's tests.

It has one tool of each effect class on the ``db`` runner: reads (``safe``), building an order
(``reversible``: held in the turn transaction until commit) and placing it, which charges a
card (``sensitive``: staged, checked by a preflight, run only at commit).
"""

from tool_adapters.demo.tools import ADAPTER

__all__ = ["ADAPTER"]

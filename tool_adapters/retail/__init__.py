"""τ²-bench's retail domain on Postgres: the shop's tools, named and behaving like τ²'s.

Data comes from τ²'s ``db.json`` through ``tau2data.load_tau2_db``; the adapter has no seed of
its own. This package does not import τ² (a test and benchmark dependency only).
"""

from tool_adapters.retail.tools import ADAPTER

__all__ = ["ADAPTER"]

"""Email over real SMTP: send now (``sensitive``), or schedule for later (``reversible``).

Scheduled mail waits in the adapter's own table until the periodic ``deliver_due`` job, run by
every tool worker, sends it; until then the compensation can still cancel it.
"""

from tool_adapters.mail.tools import ADAPTER

__all__ = ["ADAPTER"]

"""What the τ²-bench adapters (``retail``, ``airline``) share: the two tools every τ² domain
offers the agent besides its own, ``calculate`` and ``transfer_to_human_agents``, and (in
``tau2data``) a piece of loading τ²'s ``db.json``.

Not an adapter itself (it has no ``ADAPTER``); each domain lists these specs among its tools.
"""

from tool_adapters.tau2_common.tools import calculate, transfer_to_human_agents

__all__ = ["calculate", "transfer_to_human_agents"]

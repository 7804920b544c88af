"""``specgate demo``: a scripted voice order played against a real gateway.

Ann orders while the agent speculates: the gateway holds every effect in the turn's
transaction, an amended call gives its stock back, a payment is only staged, and the turn is
committed (or, the second time, cancelled) when she is done. See ``runner.run_demo``.
"""

from lab.demo.player import DemoError
from lab.demo.runner import run_demo

__all__ = ["DemoError", "run_demo"]

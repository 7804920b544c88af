"""The lab: what measures, shows and trains specgate, and is not the product.

The gateway bench (``bench``), the scripted demo (``demo``), τ²-bench conformance and its
reference side (``conformance``), the streaming τ² benchmark (``tau2bench``), training data and
fine-tuning for local models (``training``), the dashboard screenshots and real gateway servers as
child processes (``servers``). The lab may import the gateway, the agent and the adapters; none
of them imports the lab (``tests/test_layering.py``).
"""

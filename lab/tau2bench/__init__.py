"""Benchmarks of the agent worker: ``specgate bench tau2``, the streaming replay of τ²-bench tasks,
the synchronous baseline and the speculative agent side by side (docs/architecture.md#benchmarks).

``tau2_stream`` turns a τ² task into what the user says and what the oracle must call,
``ideal`` computes the post-turn critical path with every call issued at its earliest moment,
``tau2_run`` runs the tasks through a real gateway, ``tau2_report`` writes the figures.
"""

"""Clock-based training: a model learns to act on a stream of partial input under a clock.
Tool-calling tasks with gold calls are played as timed streams through the agent runtime
(``streams``, with the scripted author at its model edge, ``author``, and an in-process gateway,
``scripted_gateway``), loaded from τ²-bench (``tau2_source``) and BFCL multi-turn
(``bfcl_source``) and written as SFT chat samples by ``specgate data make`` (``data``); the
fine-tuning on them is ``specgate train`` (``sft``, ``sft_data``)."""

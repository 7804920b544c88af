"""Clock-based training (DESIGN §6, last paragraph): tool-calling tasks with gold calls played
as timed streams (``streams``), loaded from τ²-bench (``tau2_source``) and BFCL multi-turn
(``bfcl_source``) and written as SFT chat samples by ``specgate data make`` (``data``); the
fine-tuning on them is ``specgate train`` (``sft``, ``sft_data``)."""

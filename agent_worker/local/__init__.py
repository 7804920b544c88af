"""Local causal language models on transformers + torch (DESIGN §6): loading weights from a
local directory or a GGUF file, never from a hub (``weights``)."""

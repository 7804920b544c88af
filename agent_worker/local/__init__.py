"""Local causal language models on transformers + torch (docs/architecture.md#agent-worker): loading
weights from a local directory or a GGUF file, never from a hub (``weights``)."""

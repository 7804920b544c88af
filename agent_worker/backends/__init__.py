"""Model backends: the scripted ``oracle`` (declared latency profile) and any
OpenAI-compatible chat endpoint (``openai_chat``)."""

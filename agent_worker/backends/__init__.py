"""Model backends: the scripted ``oracle`` (declared latency profile), any OpenAI-compatible chat
endpoint (``openai_chat``), the OpenAI Realtime API over a websocket (``realtime``) and a local
transformers model (``local``)."""

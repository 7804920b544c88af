"""The agent worker (docs/architecture.md#agent-worker): streams the user's words into a model,
speculates through the gateway, and commits at the commit point.

Modules: ``protocol`` (the tagged stream: data types, incremental parser, rendering),
``runtime`` (the event loop: interruption, commit point, answer) with ``turn`` (its per-turn
state, config, result) and ``events`` (what its one queue carries), ``calls`` (the call DAG on
the gateway's REST API), ``placeholders`` (``"$3.a"`` in arguments), ``gateway_client``,
``clock`` (wall or simulated time), ``model`` (transcript, ``Backend`` protocol, latency
profiles), ``prompt`` (the system prompt), ``backends`` (oracle, OpenAI-compatible chat),
``inputs`` (transcript file, text at a speech rate, stdin), ``trace`` (JSON lines),
``session`` (one utterance as a session) and ``cli`` (the ``specgate agent`` command). Errors
are drawn in ``errors``. Decisions: docs/agent-worker.md.
"""

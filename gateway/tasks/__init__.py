"""The ``task`` runner: Celery tool worker, outbox and relay
(docs/architecture.md#effect-classes)."""

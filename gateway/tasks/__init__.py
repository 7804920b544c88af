"""The ``task`` runner: Celery tool worker, outbox and relay (DESIGN §2–3)."""

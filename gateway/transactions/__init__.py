"""The database transactions that hold a turn's effects until the turn is decided.

``holder`` keeps each turn's open transactions (one per database, a savepoint per call);
``decision`` is the commit marker that decides them; ``twophase`` commits them (locally, or by
PREPARE, decision, COMMIT PREPARED) and finishes prepared ones from their decision. Calls run
inside these transactions (``gateway.calls``); turns decide them (``gateway.turns``).
"""

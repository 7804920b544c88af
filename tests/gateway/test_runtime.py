"""Per-process caches of the runtime stay bounded."""

from __future__ import annotations

import gc

from gateway.runtime import LruDict, SessionLocks


def test_session_locks_live_only_while_used_and_are_reentrant() -> None:
    locks = SessionLocks()
    with locks("s1") as held:
        assert locks("s1") is held
        with locks("s1"):  # re-entrant in the same thread
            pass
    del held
    gc.collect()
    assert "s1" not in locks


def test_lru_dict_forgets_the_least_recently_used() -> None:
    cache: LruDict[str, int] = LruDict(2)
    cache["a"], cache["b"] = 1, 2
    assert cache.get("a") == 1
    cache["c"] = 3
    assert list(cache) == ["a", "c"] and cache.get("b") is None

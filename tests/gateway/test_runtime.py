"""Per-process caches of the runtime stay bounded."""

from __future__ import annotations

import gc
import threading
import weakref

from gateway.runtime import LruDict, Runtime, SessionLock


def test_session_locks_live_only_while_used_and_are_reentrant() -> None:
    rt = Runtime.__new__(Runtime)  # only the lock table is exercised: no engines needed
    rt._locks = weakref.WeakValueDictionary()
    rt._guard = threading.Lock()
    with rt.session_lock("s1") as held:
        assert rt.session_lock("s1") is held
        with rt.session_lock("s1"):  # re-entrant in the same thread
            pass
    del held
    gc.collect()
    assert "s1" not in rt._locks
    assert isinstance(rt.session_lock("s2"), SessionLock)


def test_lru_dict_forgets_the_least_recently_used() -> None:
    cache: LruDict[str, int] = LruDict(2)
    cache["a"], cache["b"] = 1, 2
    assert cache.get("a") == 1
    cache["c"] = 3
    assert list(cache) == ["a", "c"] and cache.get("b") is None

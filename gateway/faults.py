"""Fail points for crash tests: named places in the commit protocol where a test can make the
gateway stop dead, to be killed there.

``SPECGATE_FAULTS=after_prepare`` (comma-separated names) makes a gateway block forever when it
reaches that point. Unset in production, a fail point costs one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("specgate.faults")
_ACTIVE = frozenset(filter(None, os.environ.get("SPECGATE_FAULTS", "").split(",")))


def hit(name: str) -> None:
    if name in _ACTIVE:
        log.warning("fail point %r reached: blocking until the process is killed", name)
        threading.Event().wait()

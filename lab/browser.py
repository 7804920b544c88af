"""The headless browser of the dashboard's tests and screenshots: Debian's Chromium, driven by
Playwright for Python. Playwright's own browser download (``playwright install``) is never
used: the project installs ``chromium`` with apt, and this launches that binary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> Path | None:
    """``SPECGATE_CHROMIUM``, else ``/usr/bin/chromium``, else ``chromium`` on the PATH."""
    configured = os.environ.get("SPECGATE_CHROMIUM")
    for candidate in (configured, "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def launch(playwright: Any) -> Any:
    """A headless Chromium browser (Playwright ``Browser``)."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("Chromium not found: install Debian's package (apt-get install "
                           "chromium chromium-driver) or set SPECGATE_CHROMIUM")
    return playwright.chromium.launch(executable_path=str(path), args=ARGS)

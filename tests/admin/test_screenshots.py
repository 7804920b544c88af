"""``make screenshots`` draws real pages: here its capture step against the test gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.servers import LocalGateway
from tests.admin.conftest import Tenant

pytest.importorskip("playwright.sync_api")


def test_screenshots_of_every_view_at_both_widths(live_gateway: LocalGateway, acme: Tenant,
                                                   tmp_path: Path) -> None:
    from lab.screenshots import capture

    waiting = acme.pending_order()
    acme.held_call("Rae")
    written = capture(live_gateway.url, acme.admin.key, tmp_path, waiting["session"])
    assert sorted(p.name for p in written) == sorted(
        f"{view}-{width}.png" for view in ("queue", "timeline", "health")
        for width in ("laptop", "phone"))
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000

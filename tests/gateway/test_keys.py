"""Key revocation reaches every gateway within a second, not after the key cache's lifetime;
a tenant's last admin key cannot be revoked."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import make_settings
from tests.gateway.helpers import Api, new_keys


def test_a_revoked_key_is_refused_by_another_gateway_within_a_second(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    settings = make_settings(pg_home, ledger_url, key_cache_s=600)
    tenant = f"keys-{uuid.uuid4().hex[:6]}"
    app_key, admin_key = new_keys(ledger_url, tenant, "app", "admin")
    first, second = gateway_factory(settings), gateway_factory(settings)
    admin, user = Api(first, admin_key), Api(second, app_key)
    user.get("/v1/tools")  # the second gateway caches the key, for 600 s
    [key_id] = [k["id"] for k in admin.get("/v1/admin/keys").json() if k["role"] == "app"]
    time.sleep(0.5)  # both listeners are connected
    assert admin.client.delete(f"/v1/admin/keys/{key_id}",
                               headers=admin.headers).status_code == 204
    revoked_at = time.monotonic()
    while user.get("/v1/tools", expect=None).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0, "still accepted after a second"
        time.sleep(0.02)
    assert user.get("/v1/tools", expect=None).json()["error"]["code"] == "unauthorized"


def test_the_last_admin_key_of_a_tenant_cannot_be_revoked(
        gateway_factory: Any, pg_home: Path, ledger_url: str) -> None:
    [admin_key] = new_keys(ledger_url, f"keys-{uuid.uuid4().hex[:6]}", "admin")
    admin = Api(gateway_factory(make_settings(pg_home, ledger_url)), admin_key)
    [only] = admin.get("/v1/admin/keys").json()
    refused = admin.client.delete(f"/v1/admin/keys/{only['id']}", headers=admin.headers)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "last_admin_key"
    second = admin.post("/v1/admin/keys", {"role": "admin", "name": "spare"}, expect=201).json()
    assert admin.client.delete(f"/v1/admin/keys/{only['id']}",
                               headers=admin.headers).status_code == 204
    spare = Api(admin.client, second["secret"])
    refused = spare.client.delete(f"/v1/admin/keys/{second['id']}", headers=spare.headers)
    assert refused.json()["error"]["code"] == "last_admin_key"
    assert [k["id"] for k in spare.get("/v1/admin/keys").json()
            if k["revoked_at"] is None] == [second["id"]]

"""REST API contract: tenancy, roles, bad input (clear 4xx, nothing changed), idempotency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from pydantic import ValidationError

from gateway.auth.service import create_key
from gateway.config import Settings
from gateway.db import make_engine
from tests.conftest import open_shop
from tests.gateway.helpers import Api, shop_state

pytestmark = pytest.mark.parametrize("topology", ["local"], indirect=True)


def _other_tenant(shop: Any) -> Api:
    engine = make_engine(shop.settings.database_url, pool_size=1)
    _, key = create_key(engine, "someone-else", "admin")
    engine.dispose()
    return Api(shop.api.client, key)


def _session_snapshot(api: Api, sid: str) -> Any:
    return api.get(f"/v1/sessions/{sid}").json()


def test_a_key_never_sees_or_touches_another_tenants_sessions(shop: Any) -> None:
    api, other = shop.api, _other_tenant(shop)
    sid, tid = api.session()
    call = api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    before = _session_snapshot(api, sid)
    assert other.get(f"/v1/sessions/{sid}", expect=404).json()["error"]["code"] == "not_found"
    other.get(f"/v1/calls/{call['id']}", expect=404)
    other.post(f"/v1/calls/{call['id']}/cancel", {}, expect=404)
    other.post(f"/v1/sessions/{sid}/calls",
               {"tool": "demo.list_products", "client_call_id": 9}, expect=404)
    other.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {}, expect=404)
    other.post(f"/v1/sessions/{sid}/turns/{tid}/cancel", {}, expect=404)
    assert other.get(f"/v1/calls?session={sid}").json()["items"] == []
    assert _session_snapshot(api, sid) == before


def test_events_of_another_tenant_are_404(shop: Any) -> None:
    api, other = shop.api, _other_tenant(shop)
    sid, _ = api.session()
    response = other.client.get(f"/v1/sessions/{sid}/events", headers=other.headers)
    assert response.status_code == 404


def test_app_keys_get_403_on_admin_routes_and_no_key_gets_401(shop: Any) -> None:
    api, admin = shop.api, shop.admin
    assert api.get("/v1/admin/keys", expect=403).json()["error"]["code"] == "forbidden"
    api.post("/v1/admin/keys", {"role": "admin"}, expect=403)
    api.get("/v1/admin/audit/verify", expect=403)
    assert len(admin.get("/v1/admin/keys").json()) == 2
    anonymous = Api(api.client, "sgk_not-a-key")
    anonymous.get("/v1/tools", expect=401)
    assert api.client.get("/v1/tools").status_code == 401


def test_admin_creates_and_revokes_keys_of_its_tenant(shop: Any) -> None:
    admin = shop.admin
    made = admin.post("/v1/admin/keys", {"role": "app", "name": "phone"}, expect=201).json()
    newcomer = Api(admin.client, made["secret"])
    assert newcomer.get("/v1/tools").status_code == 200
    admin.client.app.state.keys.forget()
    assert admin.client.delete(f"/v1/admin/keys/{made['id']}",
                               headers=admin.headers).status_code == 204
    newcomer.get("/v1/tools", expect=401)


BAD_CALLS = [
    ({"tool": "demo.nope", "client_call_id": 1}, 422, "unknown_tool"),
    ({"tool": "nope", "client_call_id": 1}, 422, "unknown_tool"),
    ({"tool": "demo.add_item", "client_call_id": 1,
      "arguments": {"order_id": "O1", "sku": "filter", "quantity": "many"}}, 422,
     "invalid_arguments"),
    ({"tool": "demo.add_item", "client_call_id": 1,
      "arguments": {"order_id": "O1", "sku": "filter", "colour": "red"}}, 422,
     "invalid_arguments"),
    ({"tool": "demo.add_item", "client_call_id": 1, "arguments": {"sku": "filter"}}, 422,
     "invalid_arguments"),
    ({"tool": "demo.list_products", "client_call_id": 1, "extra": True}, 422,
     "invalid_request"),
    ({"tool": "demo.get_order", "client_call_id": 1, "arguments": {"order_id": "$7"}}, 422,
     "unknown_dependency"),
    ({"tool": "demo.get_order", "client_call_id": 1, "arguments": {"order_id": "x"},
      "depends_on": [5]}, 422, "unknown_dependency"),
    ({"tool": "demo.get_order", "client_call_id": 1, "arguments": {"order_id": "x"},
      "supersedes": 5}, 422, "unknown_supersedes"),
    ({"tool": "demo.get_order", "client_call_id": "bad id!"}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_CALLS)
def test_bad_calls_get_a_clear_4xx_and_change_nothing(shop: Any, body: dict[str, Any],
                                                       status: int, code: str) -> None:
    api = shop.api
    sid, _ = api.session()
    api.call(sid, "order", "create_order", arguments={"customer": "ann"})
    before, ledger_before = shop_state(shop.url), _session_snapshot(api, sid)
    response = api.post(f"/v1/sessions/{sid}/calls", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert _session_snapshot(api, sid) == ledger_before
    assert shop_state(shop.url) == before


def test_placeholder_to_a_missing_field_is_refused(shop: Any) -> None:
    api = shop.api
    sid, _ = api.session()
    api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    response = api.post(f"/v1/sessions/{sid}/calls", {
        "tool": "demo.get_order", "client_call_id": 2, "arguments": {"order_id": "$1.nope"}})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "placeholder_unresolvable"


def test_duplicate_client_id_and_calls_on_a_committed_turn_are_409(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "list_products")
    dup = api.post(f"/v1/sessions/{sid}/calls", {"tool": "demo.list_products",
                                                 "client_call_id": 1})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_client_call_id"
    api.commit(sid, tid)
    before = _session_snapshot(api, sid)
    late = api.post(f"/v1/sessions/{sid}/calls", {"tool": "demo.list_products",
                                                  "client_call_id": 2})
    assert late.status_code == 409 and late.json()["error"]["code"] == "turn_not_open"
    again = api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {})
    assert again.status_code == 409
    assert _session_snapshot(api, sid) == before


def test_next_turn_needs_the_previous_one_resolved(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    response = api.post(f"/v1/sessions/{sid}/turns", {})
    assert response.status_code == 409 and response.json()["error"]["code"] == "turn_unresolved"
    api.commit(sid, tid)
    assert api.post(f"/v1/sessions/{sid}/turns", {}).json()["seq"] == 2


def test_idempotency_key_replays_the_response_and_refuses_another_body(shop: Any) -> None:
    api = shop.api
    sid, _ = api.session()
    body = {"tool": "demo.create_order", "client_call_id": 1, "arguments": {"customer": "ann"}}
    first = api.post(f"/v1/sessions/{sid}/calls", body, **{"Idempotency-Key": "k1"})
    second = api.post(f"/v1/sessions/{sid}/calls", body, **{"Idempotency-Key": "k1"})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    calls = _session_snapshot(api, sid)["turns"][0]["calls"]
    assert len(calls) == 1  # ran once
    other = {**body, "arguments": {"customer": "bob"}}
    clash = api.post(f"/v1/sessions/{sid}/calls", other, **{"Idempotency-Key": "k1"})
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "idempotency_key_reused"
    assert _session_snapshot(api, sid)["turns"][0]["calls"] == calls


def test_errors_are_replayed_too_and_keys_are_per_tenant(shop: Any) -> None:
    api, other = shop.api, _other_tenant(shop)
    sid, _ = api.session()
    bad = {"tool": "demo.nope", "client_call_id": 1}
    one = api.post(f"/v1/sessions/{sid}/calls", bad, **{"Idempotency-Key": "same"})
    two = api.post(f"/v1/sessions/{sid}/calls", bad, **{"Idempotency-Key": "same"})
    assert one.status_code == two.status_code == 422 and one.json() == two.json()
    mine = other.post("/v1/sessions", {}, **{"Idempotency-Key": "same"})
    assert mine.status_code == 201


def test_tools_registry_lists_classes_and_schemas(shop: Any) -> None:
    tools = {t["name"]: t for t in shop.api.get("/v1/tools").json()["tools"]}
    assert {n: t["effect"] for n, t in tools.items()} == {
        "demo.list_products": "safe", "demo.get_order": "safe",
        "demo.create_order": "reversible", "demo.add_item": "reversible",
        "demo.place_order": "sensitive", "demo.shipping_quote": "safe"}
    assert tools["demo.shipping_quote"]["runner"] == "task"
    schema = tools["demo.add_item"]["parameters"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"order_id", "sku"}


def test_audit_chain_verifies(shop: Any) -> None:
    api = shop.api
    sid, tid = api.session()
    api.call(sid, 1, "create_order", arguments={"customer": "ann"})
    api.commit(sid, tid)
    report = shop.admin.get("/v1/admin/audit/verify").json()
    assert report["ok"] is True and report["events"] >= 6


def test_request_threads_sizes_the_pool_that_runs_requests(
        topology: str, pg_home: Path, ledger_url: str, tool_url: str, gateway_factory: Any,
        tenant: str) -> None:
    shop = open_shop(topology, pg_home, ledger_url, tool_url, gateway_factory, tenant,
                     request_threads=3)
    limiter = shop.api.client.portal.call(anyio.to_thread.current_default_thread_limiter)
    assert limiter.total_tokens == 3
    sid, tid = shop.api.session()
    assert shop.api.call(sid, 1, "list_products", wait=5)["status"] == "succeeded"
    assert shop.api.call(sid, 2, "create_order", arguments={"customer": "ada"},
                         wait=5)["status"] == "held"
    assert shop.api.commit(sid, tid)["status"] == "committed"
    with pytest.raises(ValidationError, match="request_threads"):
        Settings(request_threads=0)

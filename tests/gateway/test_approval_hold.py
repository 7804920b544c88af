"""Approval of `db`-runner calls, the turn held across approval
(docs/architecture.md#two-phase-commit): the committed turn's transaction is PREPAREd and waits,
in both topologies, until approved, denied or expired.

Against real Postgres; the shop's state is read from another connection, so "nothing visible"
means what it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from gateway.turns.recovery import reconcile
from tests.conftest import ShopFixture, open_shop
from tests.gateway.helpers import Api, expire_approval, new_keys, shop_state

PLACE = {"order_id": "$1.order_id", "card_last4": "4242"}
TWO_APPROVALS = "two-approvals"  # its policy also puts demo.add_item under approval


@dataclass
class HeldShop(ShopFixture):
    @property
    def ledger_url(self) -> str:
        return str(self.settings.database_url)

    def place_order_turn(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Create an order, add to it, place it (needs approval) and commit the turn:
        (the staged place_order call, its confirm token, the commit response)."""
        sid, tid = self.api.session()
        self.api.call(sid, "1", "create_order", arguments={"customer": "Ann"})
        self.api.call(sid, "2", "add_item", depends_on=["1"],
                      arguments={"order_id": "$1.order_id", "sku": "espresso", "quantity": 2})
        staged = self.api.call(sid, "3", "place_order", depends_on=["2"], arguments=PLACE)
        assert staged["status"] == "staged" and staged["requires_approval"]
        return staged, staged["confirm_token"], self.api.commit(sid, tid)

    def prepared(self) -> list[str]:
        engine = create_engine(self.url, poolclass=NullPool)
        with engine.connect() as conn:
            gids = conn.execute(text("SELECT gid FROM pg_prepared_xacts "
                                     "WHERE database = current_database()")).scalars().all()
        engine.dispose()
        return list(gids)

    def status(self, call_id: str, api: Api | None = None) -> str:
        return str((api or self.api).get(f"/v1/calls/{call_id}").json()["status"])


@pytest.fixture
def held_shop(topology: str, pg_home: Path, ledger_url: str, tool_url: str,
              gateway_factory: Any, tenant: str) -> HeldShop:
    shop = open_shop(topology, pg_home, ledger_url, tool_url, gateway_factory, tenant,
                     approval_policy={"*": ["demo.place_order"],
                                      TWO_APPROVALS: ["demo.add_item"]})
    return HeldShop(**vars(shop))


def _ours(shop: HeldShop, gids: list[str], turn_id: str) -> list[str]:
    return [g for g in gids if f":{turn_id}:" in g]


def test_committed_turn_waits_prepared_and_invisible_until_approved(held_shop: HeldShop) -> None:
    shop = held_shop
    before = shop_state(shop.url)
    staged, token, turn = shop.place_order_turn()
    statuses = {c["client_call_id"]: c["status"] for c in turn["calls"]}
    assert turn["status"] == "committed"
    assert statuses == {"1": "awaiting_approval", "2": "awaiting_approval",
                        "3": "awaiting_approval"}
    placed = next(c for c in turn["calls"] if c["client_call_id"] == "3")
    assert placed["result"]["status"] == "placed"  # ran at commit, in the prepared transaction
    assert len(_ours(shop, shop.prepared(), turn["id"])) == 1
    assert shop_state(shop.url) == before  # prepared: nobody else sees it

    rider = next(c for c in turn["calls"] if c["client_call_id"] == "1")
    refused = shop.admin.post(f"/v1/calls/{rider['id']}/approve", {}, expect=409).json()
    assert refused["error"]["code"] == "approval_not_required"

    approved = shop.api.post(f"/v1/calls/{staged['id']}/approve", {"confirm_token": token},
                             expect=200).json()
    assert approved["status"] == "succeeded"
    assert [shop.status(c["id"]) for c in turn["calls"]] == ["succeeded"] * 3
    assert _ours(shop, shop.prepared(), turn["id"]) == []
    after = shop_state(shop.url)
    assert [o["status"] for o in after["demo_orders"]] == ["placed"]
    assert after["demo_payments"][0]["amount_cents"] == 2 * 2400
    again = shop.api.post(f"/v1/calls/{staged['id']}/approve", {"confirm_token": token},
                          expect=409).json()
    assert again["error"]["code"] == "not_awaiting_approval"


def test_deny_rolls_back_the_whole_turn_transaction(held_shop: HeldShop) -> None:
    shop = held_shop
    before = shop_state(shop.url)
    staged, _, turn = shop.place_order_turn()
    denied = shop.admin.post(f"/v1/calls/{staged['id']}/deny", {"reason": "wrong card"},
                             expect=200).json()
    assert denied["status"] == "denied"
    assert [shop.status(c["id"]) for c in turn["calls"]] == ["denied"] * 3
    assert _ours(shop, shop.prepared(), turn["id"]) == []
    assert shop_state(shop.url) == before


def test_prepared_turn_survives_a_new_gateway_and_its_reconciler(
        held_shop: HeldShop, gateway_factory: Any) -> None:
    shop = held_shop
    staged, token, turn = shop.place_order_turn()
    other = gateway_factory(shop.runtime.settings)  # starts with a reconciler pass
    reconcile(other.app.state.runtime)
    reconcile(shop.runtime)
    assert len(_ours(shop, shop.prepared(), turn["id"])) == 1
    api = Api(other, shop.api.key)
    approved = api.post(f"/v1/calls/{staged['id']}/approve", {"confirm_token": token},
                        expect=200).json()
    assert approved["status"] == "succeeded"
    assert [o["status"] for o in shop_state(shop.url)["demo_orders"]] == ["placed"]


def test_expired_approval_is_denied_and_rolled_back_by_the_reaper(held_shop: HeldShop) -> None:
    from gateway.calls.approvals import deny_expired

    shop = held_shop
    before = shop_state(shop.url)
    staged, token, turn = shop.place_order_turn()
    expire_approval(shop.ledger_url, staged["id"])
    late = shop.api.post(f"/v1/calls/{staged['id']}/approve", {"confirm_token": token},
                         expect=409).json()
    assert late["error"]["code"] == "approval_expired"
    assert deny_expired(shop.runtime) >= 1
    assert [shop.status(c["id"]) for c in turn["calls"]] == ["denied"] * 3
    assert _ours(shop, shop.prepared(), turn["id"]) == []
    assert shop_state(shop.url) == before


@pytest.mark.parametrize("second", ["approve", "deny"])
def test_every_approval_of_the_transaction_is_needed(held_shop: HeldShop, second: str) -> None:
    shop = held_shop
    app_key, admin_key = new_keys(shop.ledger_url, TWO_APPROVALS, "app", "admin")
    api, admin = Api(shop.api.client, app_key), Api(shop.api.client, admin_key)
    before = shop_state(shop.url)
    sid, tid = api.session()
    api.call(sid, "1", "create_order", arguments={"customer": "Ann"})
    add = api.call(sid, "2", "add_item", depends_on=["1"],
                   arguments={"order_id": "$1.order_id", "sku": "filter", "quantity": 1})
    place = api.call(sid, "3", "place_order", depends_on=["2"], arguments=PLACE)
    assert add["status"] == "staged" and add["requires_approval"]
    turn = api.commit(sid, tid)
    api.post(f"/v1/calls/{add['id']}/approve", {"confirm_token": add["confirm_token"]},
             expect=200)
    assert shop.status(add["id"], api) == "approved"
    assert len(_ours(shop, shop.prepared(), turn["id"])) == 1  # one approval still missing
    assert shop_state(shop.url) == before
    admin.post(f"/v1/calls/{place['id']}/{second}", {}, expect=200)
    statuses = [shop.status(c["id"], api) for c in turn["calls"]]
    assert _ours(shop, shop.prepared(), turn["id"]) == []
    if second == "approve":
        assert statuses == ["succeeded"] * 3
        assert [o["status"] for o in shop_state(shop.url)["demo_orders"]] == ["placed"]
    else:
        assert statuses == ["denied", "failed", "denied"]
        failed = api.get(f"/v1/calls/{add['id']}").json()
        assert failed["error"]["code"] == "denied_with_turn"
        assert shop_state(shop.url) == before

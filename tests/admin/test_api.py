"""The operator API behind the dashboard, on an in-process gateway over real Postgres."""

from __future__ import annotations

import pytest

from tests.admin.conftest import World, audit_details, expire_turn_in, ledger_sql

ADMIN_GETS = ["/v1/admin/me", "/v1/admin/queue", "/v1/admin/health", "/v1/admin/events",
              "/v1/admin/sessions/{sid}/timeline", "/admin/fragments/queue",
              "/admin/fragments/health", "/admin/fragments/sessions/{sid}"]
ADMIN_POSTS = ["/v1/admin/calls/{cid}/retry-compensation", "/v1/admin/calls/{cid}/extend-ttl",
               "/v1/admin/turns/{tid}/extend-ttl"]


def test_app_keys_get_403_and_no_key_401_on_every_admin_route(admin_world: World) -> None:
    client, acme, _ = admin_world
    held = acme.held_call()
    ids = {"sid": held["session"], "cid": held["call"], "tid": held["turn"]}
    for path in ADMIN_GETS:
        url = path.format(**ids)
        assert acme.app.get(url, expect=None).status_code == 403, url
        assert client.get(url).status_code == 401, url
    for path in ADMIN_POSTS:
        url = path.format(**ids)
        response = acme.app.post(url, {"seconds": 10})
        assert response.status_code == 403, url
        assert response.json()["error"]["code"] == "forbidden"
        assert client.post(url, json={"seconds": 10}).status_code == 401


def test_page_shells_carry_no_data_and_strict_headers(admin_world: World) -> None:
    client, acme, _ = admin_world
    held = acme.held_call()
    for path in ("/admin", f"/admin/sessions/{held['session']}", "/admin/health"):
        response = client.get(path)
        assert response.status_code == 200
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert held["call"] not in response.text and acme.name not in response.text
        assert '<script src="/admin/static/admin.js" defer>' in response.text
    assert client.get("/admin/static/admin.js").status_code == 200
    assert client.get("/admin/static/../app.py").status_code == 404
    # Names that reach the static route: only the listed files are served.
    for name in ("%2E%2E", "pages.py"):
        assert client.get(f"/admin/static/{name}").status_code == 404, name


def test_queue_shows_what_holds_each_pending_call(admin_world: World) -> None:
    _, acme, _ = admin_world
    waiting = acme.pending_order()
    held = acme.held_call()
    sid = held["session"]
    acme.app.call(sid, "2", "add_item", depends_on=["1"],
                  arguments={"order_id": "$1.order_id", "sku": "espresso"})
    staged = acme.app.call(sid, "3", "place_order", depends_on=["2"],
                           arguments={"order_id": "$1.order_id", "card_last4": "1111"})
    assert staged["status"] == "staged", staged
    page = acme.admin.get("/v1/admin/queue").json()
    rows = {item["id"]: item for item in page["items"]}
    assert rows[held["call"]]["status"] == "held"
    assert rows[held["call"]]["holder"]["kind"] == "turn_transaction"
    assert rows[held["call"]]["ttl"]["kind"] == "turn"
    assert {"cancel", "commit_turn", "extend_turn"} <= set(rows[held["call"]]["actions"])
    assert rows[staged["id"]]["holder"]["kind"] == "staged"
    assert "extend_call" in rows[staged["id"]]["actions"]
    approval = rows[waiting["call"]]
    assert approval["status"] == "awaiting_approval" and approval["ttl"]["kind"] == "approval"
    assert approval["holder"]["kind"] == "prepared"
    assert approval["holder"]["detail"]["gids"][0].startswith("sg:" + waiting["turn"])
    assert set(approval["holder"]["detail"]["prepared_at"]) == \
        set(approval["holder"]["detail"]["gids"])  # the age of each, from pg_prepared_xacts
    assert set(approval["actions"]) == {"approve", "deny", "extend_call"}
    assert approval["arguments"]["card_last4"] == "4242"
    assert approval["arguments"]["order_id"].startswith("O-ann-")
    riders = [i for i in page["items"] if i["turn_id"] == waiting["turn"] and i["id"] !=
              waiting["call"]]
    assert len(riders) == 2  # create_order and add_item wait in the same prepared transaction
    assert all(r["holder"]["kind"] == "prepared" and r["actions"] == [] for r in riders)
    assert page["counts"]["held"] == 2 and page["counts"]["awaiting_approval"] == 3


def test_queue_filters_search_and_pages(admin_world: World) -> None:
    _, acme, _ = admin_world
    first, second = acme.held_call("Cy"), acme.held_call("Di")
    acme.app.commit(first["session"], first["turn"])  # committed: no longer pending
    ids = [i["id"] for i in acme.admin.get("/v1/admin/queue").json()["items"]]
    assert second["call"] in ids and first["call"] not in ids
    found = acme.admin.get(f"/v1/admin/queue?q={first['call']}").json()["items"]
    assert [i["status"] for i in found] == ["committed"]  # a search looks at every status
    by_session = acme.admin.get(f"/v1/admin/queue?session={second['session']}").json()
    assert [i["id"] for i in by_session["items"]] == [second["call"]]
    assert acme.admin.get("/v1/admin/queue?effect=sensitive").json()["items"] == []
    assert acme.admin.get("/v1/admin/queue?tool=demo.get_order").json()["items"] == []
    assert acme.admin.get("/v1/admin/queue?status=held").json()["items"][0]["id"] == \
        second["call"]
    third = acme.held_call("Ed")
    one = acme.admin.get("/v1/admin/queue?limit=1").json()
    assert [i["id"] for i in one["items"]] == [third["call"]] and one["next_cursor"]
    two = acme.admin.get(f"/v1/admin/queue?limit=1&cursor={one['next_cursor']}").json()
    assert [i["id"] for i in two["items"]] == [second["call"]]
    assert acme.admin.get("/v1/admin/queue?status=nope", expect=400)
    assert acme.admin.get("/v1/admin/queue?tenant=someone-else", expect=400)


def test_a_tenant_admin_sees_and_touches_nothing_of_another_tenant(admin_world: World) -> None:
    _, acme, other = admin_world
    theirs = other.held_call()
    waiting = other.pending_order(sku="espresso")
    assert all(i["tenant"] == acme.name for i in acme.admin.get("/v1/admin/queue").json()
               ["items"])
    assert acme.admin.get(f"/v1/admin/queue?q={theirs['call']}").json()["items"] == []
    acme.admin.get(f"/v1/admin/sessions/{theirs['session']}/timeline", expect=404)
    acme.admin.get(f"/admin/fragments/sessions/{theirs['session']}", expect=404)
    acme.admin.get(f"/v1/admin/events?session={theirs['session']}", expect=404)
    health = acme.admin.get("/v1/admin/health").json()
    assert health["prepared"] == [] and health["outbox"]["pending"] == 0
    for path, body in ((f"/v1/admin/calls/{theirs['call']}/extend-ttl", {"seconds": 5}),
                       (f"/v1/admin/turns/{theirs['turn']}/extend-ttl", {"seconds": 5}),
                       (f"/v1/admin/calls/{theirs['call']}/retry-compensation", {}),
                       (f"/v1/calls/{waiting['call']}/approve", {})):
        assert acme.admin.post(path, body).status_code == 404, path
    assert other.admin.get("/v1/admin/health").json()["prepared"][0]["turn_id"] == \
        waiting["turn"]
    fragment = acme.admin.get("/admin/fragments/queue").text
    assert theirs["call"] not in fragment and other.name not in fragment


def test_extending_a_turn_is_bounded_and_audited(admin_world: World, ledger_url: str) -> None:
    _, acme, _ = admin_world
    held = acme.held_call()
    before = acme.app.get(f"/v1/sessions/{held['session']}").json()["turns"][0]["expires_at"]
    response = acme.admin.post(f"/v1/admin/turns/{held['turn']}/extend-ttl", {"seconds": 30},
                               expect=None)
    assert response.status_code == 409 and response.json()["error"]["code"] == "ttl_at_bound"
    # The default turn TTL is 300 s and a fresh turn has all of it: move its end closer.
    expire_turn_in(ledger_url, held["turn"], seconds=60)
    view = acme.admin.post(f"/v1/admin/turns/{held['turn']}/extend-ttl", {"seconds": 120},
                           expect=200).json()
    assert view["kind"] == "turn" and view["expires_at"] > view["previous"]
    after = acme.app.get(f"/v1/sessions/{held['session']}").json()["turns"][0]["expires_at"]
    assert after == view["expires_at"] != before
    events = audit_details(ledger_url, held["turn"])
    assert events[-1]["from"] == events[-1]["to"] == "open"
    assert events[-1]["detail"]["action"] == "extend_ttl"
    assert acme.admin.get("/v1/admin/audit/verify").json()["ok"]
    acme.app.commit(held["session"], held["turn"])  # the held transaction survived


def test_extending_staged_calls_and_approvals(admin_world: World, ledger_url: str) -> None:
    _, acme, _ = admin_world
    waiting = acme.pending_order()
    before = acme.admin.get(f"/v1/calls/{waiting['call']}").json()["approval_expires_at"]
    ledger_sql(ledger_url, "UPDATE calls SET approval_expires_at = now() + interval "
               "'10 seconds' WHERE id = :c", c=waiting["call"])
    view = acme.admin.post(f"/v1/admin/calls/{waiting['call']}/extend-ttl", {"seconds": 90},
                           expect=200).json()
    assert view["kind"] == "approval" and view["expires_at"] != before
    assert audit_details(ledger_url, waiting["call"])[-1]["detail"]["action"] == "extend_ttl"
    held = acme.held_call()
    acme.admin.post(f"/v1/admin/calls/{held['call']}/extend-ttl", {"seconds": 5}, expect=409)
    acme.admin.post(f"/v1/admin/calls/{waiting['call']}/extend-ttl", {"seconds": 0}, expect=422)
    acme.admin.post(f"/v1/calls/{waiting['call']}/approve", {}, expect=200)
    assert acme.admin.get("/v1/admin/audit/verify").json()["ok"]


def test_transcript_chunks_are_appended_and_drawn(admin_world: World) -> None:
    _, acme, other = admin_world
    sid, tid = acme.app.session()
    first = acme.app.post(f"/v1/sessions/{sid}/transcript", {"text": "I'd like to"},
                          expect=201).json()
    assert first["turn_id"] == tid and first["final"] is False
    acme.app.post(f"/v1/sessions/{sid}/transcript",
                  {"text": "order two bags", "final": True}, expect=201)
    acme.app.call(sid, "1", "create_order", arguments={"customer": "Ann"})
    chunks = acme.app.get(f"/v1/sessions/{sid}/transcript").json()
    assert [c["text"] for c in chunks] == ["I'd like to", "order two bags"]
    other.app.post(f"/v1/sessions/{sid}/transcript", {"text": "x"}, expect=404)
    other.app.get(f"/v1/sessions/{sid}/transcript", expect=404)
    acme.app.post(f"/v1/sessions/{sid}/transcript", {"text": ""}, expect=422)
    timeline = acme.admin.get(f"/v1/admin/sessions/{sid}/timeline").json()
    assert [c["text"] for c in timeline["transcript"]] == ["I'd like to", "order two bags"]
    assert [e["label"] for e in timeline["events"] if e["call_id"]] == \
        ["issued", "running", "held"]
    html = acme.admin.get(f"/admin/fragments/sessions/{sid}").text
    assert "order two bags" in html and 'data-status="held"' in html


def test_session_metadata_and_arguments_are_redacted(admin_world: World) -> None:
    _, acme, _ = admin_world
    body = {"metadata": {"caller": "ann", "api_key": "abc123", "auth": {"token": "t"}}}
    sid = acme.app.post("/v1/sessions", body, expect=201).json()["id"]
    timeline = acme.admin.get(f"/v1/admin/sessions/{sid}/timeline").json()
    assert timeline["session"]["metadata"] == {"caller": "ann", "api_key": "•••",
                                               "auth": "•••"}
    html = acme.admin.get(f"/admin/fragments/sessions/{sid}").text
    assert "abc123" not in html


@pytest.mark.parametrize("name,secret", [("password", True), ("api_key", True),
                                         ("apiKey", True), ("card_last4", False),
                                         ("card_number", True), ("shipping", False),
                                         ("clientSecret", True), ("order_id", False)])
def test_secret_keys(name: str, secret: bool) -> None:
    from gateway.admin.redact import secret_key

    assert secret_key(name) is secret


def test_secret_values_are_redacted_anywhere() -> None:
    from gateway.admin.redact import MASK, redact

    value = {"note": "Bearer abc.def", "list": ["sgk_xyz", "plain"], "card": "4242 4242 4242 4242",
             "n": 3}
    assert redact(value) == {"note": MASK, "list": [MASK, "plain"], "card": MASK, "n": 3}


def test_health_reports_prepared_outbox_heartbeats_and_speculation(
        admin_world: World, ledger_url: str) -> None:
    from gateway.db import make_engine
    from gateway.tasks.worker import worker_beat

    _, acme, _ = admin_world
    waiting = acme.pending_order()
    sid, tid = acme.app.session()
    acme.app.call(sid, "1", "create_order", arguments={"customer": "Fay"})
    acme.app.call(sid, "1", "create_order", supersedes="1", arguments={"customer": "Fae"})
    acme.app.commit(sid, tid)
    engine = make_engine(ledger_url, pool_size=1)
    worker_beat(engine, "test-worker")
    engine.dispose()
    health = acme.admin.get("/v1/admin/health").json()
    (prepared,) = health["prepared"]
    assert prepared["turn_id"] == waiting["turn"] and prepared["decision"] == "approval"
    assert prepared["age_s"] >= 0
    assert health["held"]["bound"] == 32
    assert any(w["id"] == "test-worker" and w["alive"] for w in health["heartbeats"]["workers"])
    spec = {t["tool"]: t for t in health["speculation"]["tools"]}
    assert spec["demo.create_order"]["kept"] == 2  # two committed turns
    assert spec["demo.create_order"]["dropped"] == 1  # the amended one
    assert spec["demo.create_order"]["decided"] == 3
    html = acme.admin.get("/admin/fragments/health").text
    assert waiting["turn"][:20] in html and "test-worker" in html

"""The fast path of ``POST /v1/sessions/{id}/calls`` (gateway.sessions.fastpath) answers exactly
as the declared FastAPI route does, and hands every request it cannot answer that way to it.

The route is reached on purpose with ``?wait=0``: a query string always goes to the route, and
waiting zero seconds changes nothing. Which path served a request is observed by counting the
fast path's runs of its handler (the real function, called through).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from gateway.sessions import fastpath
from tests.gateway.helpers import Api

local = pytest.mark.parametrize("topology", ["local"], indirect=True)


@pytest.fixture
def served_fast(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per request the fast path answered itself."""
    runs: list[int] = []
    real = fastpath.run_in_threadpool

    async def counting(fn: Any, *args: Any) -> Any:
        runs.append(1)
        return await real(fn, *args)

    monkeypatch.setattr(fastpath, "run_in_threadpool", counting)
    return runs


_IDS = re.compile(r"\b(?:ses|turn|call)_[0-9A-Za-z]+|\bO-[a-z]+-\d+\b|"
                  r"\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d)?")


def _normal(response: Any) -> tuple[int, Any]:
    """Status and body with ids, order numbers and times blanked (the two sessions differ in
    those only)."""
    return response.status_code, json.loads(_IDS.sub("…", response.text))


def _turn_of_calls(api: Api, sid: str, query: str) -> list[tuple[int, Any]]:
    """Every kind of answer the route gives: each effect class, a placeholder, an amend, a
    staged call, refusals by the service, and a call on the committed turn."""
    path = f"/v1/sessions/{sid}/calls{query}"
    bodies: list[dict[str, Any]] = [
        {"tool": "demo.create_order", "client_call_id": 1, "arguments": {"customer": "ann"}},
        {"tool": "demo.add_item", "client_call_id": 2,
         "arguments": {"order_id": "$1.order_id", "sku": "espresso", "quantity": 2}},
        {"tool": "demo.get_order", "client_call_id": 3, "arguments": {"order_id": "$1.order_id"},
         "depends_on": [2]},
        {"tool": "demo.add_item", "client_call_id": 2, "supersedes": 2,
         "arguments": {"order_id": "$1.order_id", "sku": "grinder"}},
        {"tool": "demo.place_order", "client_call_id": 4,
         "arguments": {"order_id": "$1.order_id", "card_last4": "4242"}},
        {"tool": "demo.nope", "client_call_id": 5},
        {"tool": "demo.list_products", "client_call_id": 1},
        {"tool": "demo.add_item", "client_call_id": 6,
         "arguments": {"order_id": "$1.order_id", "sku": "filter", "colour": "red"}},
        {"tool": "demo.get_order", "client_call_id": 7, "arguments": {"order_id": "$9"}},
    ]
    answers = [_normal(api.post(path, body)) for body in bodies]
    turn = api.get(f"/v1/sessions/{sid}").json()["turns"][-1]["id"]
    api.commit(sid, turn)
    answers.append(_normal(api.post(path, {"tool": "demo.list_products", "client_call_id": 8})))
    answers.append(_normal(api.post(f"/v1/sessions/ses_nope/calls{query}",
                                    {"tool": "demo.list_products", "client_call_id": 1})))
    return answers


@local
def test_the_fast_path_answers_as_the_declared_route(shop: Any, served_fast: list[int]) -> None:
    api = shop.api
    api.get("/v1/tools")  # the key is in the cache from here on
    fast_sid, _ = api.session()
    fast = _turn_of_calls(api, fast_sid, "")
    assert len(served_fast) == len(fast)
    route_sid, _ = api.session()
    routed = _turn_of_calls(api, route_sid, "?wait=0")
    assert len(served_fast) == len(fast)  # none of these
    assert fast == routed
    statuses = [status for status, _ in fast]
    assert statuses == [201, 201, 201, 201, 201, 422, 409, 422, 422, 409, 404]
    fast_calls = api.get(f"/v1/sessions/{fast_sid}").json()["turns"][0]["calls"]
    routed_calls = api.get(f"/v1/sessions/{route_sid}").json()["turns"][0]["calls"]
    assert [(c["status"], c["tool"]) for c in fast_calls] == [
        (c["status"], c["tool"]) for c in routed_calls]


def _raw_post(api: Api, sid: str, content: bytes, content_type: str = "application/json",
              **headers: str) -> Any:
    return api.client.post(f"/v1/sessions/{sid}/calls", content=content,
                           headers={**api.headers, "Content-Type": content_type, **headers})


@local
@pytest.mark.parametrize(("content", "content_type", "status", "code"), [
    (b'{"tool": "demo.list_products"', "application/json", 422, "invalid_request"),
    (b'[{"tool": "demo.list_products", "client_call_id": 1}]', "application/json", 422,
     "invalid_request"),
    (b'{"tool": "demo.list_products", "client_call_id": 1, "extra": true}', "application/json",
     422, "invalid_request"),
    (b'{"tool": "demo.list_products", "client_call_id": 1}', "text/plain", 422,
     "invalid_request"),
    (b"", "application/json", 422, "invalid_request"),
])
def test_what_the_fast_path_cannot_answer_goes_to_the_route(
        shop: Any, served_fast: list[int], content: bytes, content_type: str, status: int,
        code: str) -> None:
    api = shop.api
    sid, _ = api.session()
    before = api.get(f"/v1/sessions/{sid}").json()
    response = _raw_post(api, sid, content, content_type)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["details"]["errors"][0]["loc"][0] == "body"
    assert served_fast == []
    assert api.get(f"/v1/sessions/{sid}").json() == before


@local
@pytest.mark.parametrize("content", [b'{"tool": "demo.list_products", "client_call_id": NaN}',
                                     '{"tool": "demo.list_products", "client_call_id": 1}'
                                     .encode("utf-16")])
def test_json_only_the_route_reads_is_left_to_it(shop: Any, served_fast: list[int],
                                                 content: bytes) -> None:
    """Python's json.loads reads NaN and UTF-16, orjson does not: whatever the route makes of
    them stays its answer."""
    api = shop.api
    sid, _ = api.session()
    answer = _normal(_raw_post(api, sid, content))
    other, _ = api.session()
    routed = api.client.post(f"/v1/sessions/{other}/calls?wait=0", content=content, headers={
        **api.headers, "Content-Type": "application/json"})
    assert answer == _normal(routed)
    assert served_fast == []


@local
def test_keys_the_cache_does_not_hold_are_checked_by_the_route(
        shop: Any, served_fast: list[int]) -> None:
    api = shop.api
    sid, _ = api.session()
    body = {"tool": "demo.list_products", "client_call_id": 1}
    assert Api(api.client, "sgk_not-a-key").post(f"/v1/sessions/{sid}/calls", body,
                                                 expect=401).json()["error"]["code"] == (
        "unauthorized")
    assert api.client.post(f"/v1/sessions/{sid}/calls", json=body).status_code == 401
    api.client.app.state.keys.forget()
    api.call(sid, 1, "list_products")  # authenticated by the route, which caches the key
    assert served_fast == []
    api.call(sid, 2, "list_products")
    assert served_fast == [1]


@local
def test_an_idempotency_key_means_the_same_on_both_paths(
        shop: Any, served_fast: list[int]) -> None:
    """A response stored by the route is replayed by the fast path (its fingerprint is of the
    path without the query), and the call ran once."""
    api = shop.api
    sid, _ = api.session()
    body = {"tool": "demo.create_order", "client_call_id": 1, "arguments": {"customer": "ann"}}
    key = {"Idempotency-Key": "k-both"}
    routed = api.post(f"/v1/sessions/{sid}/calls?wait=0", body, **key)
    assert served_fast == []
    replayed = api.post(f"/v1/sessions/{sid}/calls", body, **key)
    assert served_fast == [1]
    assert routed.status_code == replayed.status_code == 201
    assert routed.json() == replayed.json()
    assert len(api.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"]) == 1


@local
def test_a_client_gone_before_its_body_arrived_gets_no_answer_and_changes_nothing(
        shop: Any) -> None:
    api = shop.api
    sid, _ = api.session()
    before = api.get(f"/v1/sessions/{sid}").json()
    sent: list[Any] = []
    handed_over: list[Any] = []
    scope = {"type": "http", "method": "POST", "path": f"/v1/sessions/{sid}/calls",
             "query_string": b"", "root_path": "", "headers": [
                 (b"authorization", f"Bearer {api.key}".encode()),
                 (b"content-type", b"application/json")]}
    messages = iter([{"type": "http.request", "body": b'{"tool": "demo.', "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    async def route(*args: Any) -> None:
        handed_over.append(args)

    assert fastpath.matches(scope)
    asyncio.run(fastpath.serve(api.client.app.state, route, scope, receive, send))
    assert sent == [] and handed_over == []
    assert api.get(f"/v1/sessions/{sid}").json() == before


def test_only_the_hot_route_takes_the_fast_path() -> None:
    def scope(method: str, path: str, root_path: str = "") -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": root_path}

    assert fastpath.matches(scope("POST", "/v1/sessions/ses_1/calls"))
    assert not fastpath.matches(scope("GET", "/v1/sessions/ses_1/calls"))
    assert not fastpath.matches(scope("POST", "/v1/sessions/ses_1/calls/"))
    assert not fastpath.matches(scope("POST", "/v1/sessions/ses_1/turns"))
    assert not fastpath.matches(scope("POST", "/v1/sessions//calls"))
    assert not fastpath.matches(scope("POST", "/api/v1/sessions/ses_1/calls", "/api"))
    assert not fastpath.matches({"type": "websocket", "path": "/v1/sessions/ses_1/calls"})

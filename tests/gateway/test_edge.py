"""Bad input is a clear 4xx JSON error and changes nothing: each input below once gave a 500
(or was stored as something else). A bug is a JSON 500 with a correlation id in its log line."""

from __future__ import annotations

import http.client
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, reset_shop
from tests.gateway.helpers import Api, ledger_sql, local_gateways, new_keys

LIMIT = 4096


@pytest.fixture
def api(gateway_factory: Any, pg_home: Path, ledger_url: str) -> Api:
    settings = make_settings(pg_home, ledger_url, max_body_bytes=LIMIT)
    reset_shop(ledger_url, settings)
    [key] = new_keys(ledger_url, f"edge-{uuid.uuid4().hex[:6]}", "app")
    return Api(gateway_factory(settings), key)


def _raw(api: Api, path: str, body: bytes) -> Any:
    return api.client.post(path, content=body, headers={
        **api.headers, "Content-Type": "application/json"})


def _sessions(ledger_url: str) -> int:
    [(count,)] = ledger_sql(ledger_url, "SELECT count(*) FROM sessions")
    return int(count)


def _refused(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    return error


NESTED = b'{"metadata": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}"


@pytest.mark.parametrize(("body", "code", "field"), [
    (b'{"metadata": {"note": "a\\u0000b"}}', "unstorable_value", "metadata.note"),
    (b'{"metadata": {"a\\u0000b": 1}}', "unstorable_value", "metadata"),
    (b'{"metadata": {"note": "\\ud800"}}', "unstorable_value", "metadata.note"),
    (b'{"metadata": {"n": 123456789012345678901234567890}}', "unstorable_value", None),
    (b'{"metadata": {"n": NaN}}', "unstorable_value", None),
    (b'{"metadata": {"n": 1e400}}', "unstorable_value", None),
    (NESTED, "too_deep", None),
], ids=["nul", "nul-in-key", "lone-surrogate", "int-past-64-bits", "nan", "infinite",
        "900-levels"])
def test_a_session_with_metadata_postgres_cannot_store_is_refused(
        api: Api, ledger_url: str, body: bytes, code: str, field: str | None) -> None:
    before = _sessions(ledger_url)
    error = _refused(_raw(api, "/v1/sessions", body), 422, code)
    if field is not None:
        assert error["details"]["field"] == field
    assert _sessions(ledger_url) == before


def test_a_call_with_a_nul_in_an_argument_is_refused_naming_it(api: Api) -> None:
    sid, _ = api.session()
    body = (b'{"tool": "demo.create_order", "client_call_id": 1, '
            b'"arguments": {"customer": "ann\\u0000"}}')
    error = _refused(_raw(api, f"/v1/sessions/{sid}/calls", body), 422, "unstorable_value")
    assert error["details"]["field"] == "arguments.customer"
    assert api.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"] == []


def test_a_body_past_the_limit_is_refused_413(api: Api, ledger_url: str) -> None:
    before = _sessions(ledger_url)
    big = {"metadata": {"blob": "x" * LIMIT}}
    error = _refused(api.post("/v1/sessions", big), 413, "body_too_large")
    assert error["details"]["limit"] == LIMIT
    assert _sessions(ledger_url) == before
    sid, _ = api.session()
    _refused(api.post(f"/v1/sessions/{sid}/calls", {
        "tool": "demo.create_order", "client_call_id": 1,
        "arguments": {"customer": "x" * LIMIT}}), 413, "body_too_large")
    assert api.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"] == []


def test_malformed_json_is_a_422(api: Api) -> None:
    _refused(_raw(api, "/v1/sessions", b'{"metadata": '), 422, "invalid_request")


def test_ids_are_strict(api: Api) -> None:
    sid, tid = api.session()
    _refused(api.post(f"/v1/sessions/{sid}/calls", {
        "tool": "demo.list_products", "client_call_id": True}), 422, "invalid_request")
    assert api.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"] == []
    api.call(sid, 1, "list_products")
    _refused(api.post(f"/v1/sessions/{sid}/turns/{tid}/commit", {"keep": [""]}), 422,
             "invalid_request")
    _refused(api.post("/v1/sessions/ses_nope/turns/turn_nope/commit", {"keep": [""]}), 422,
             "invalid_request")
    assert api.get(f"/v1/sessions/{sid}").json()["turns"][0]["status"] == "open"
    assert api.commit(sid, tid, keep=[1])["status"] == "committed"


def test_a_bug_is_a_json_500_with_a_correlation_id_in_the_log(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A route that fails unexpectedly (added here: the gateway's own routes have no known
    bug to show it with)."""

    def broken() -> None:
        raise RuntimeError("a bug")

    api.client.app.add_api_route("/v1/broken", broken)  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="specgate.app"):
        error = _refused(api.client.get("/v1/broken"), 500, "internal_error")
    correlation = error["details"]["correlation_id"]
    assert any(correlation in r.getMessage() and r.exc_info for r in caplog.records)
    assert api.client.get("/healthz").status_code == 200  # the app goes on


def test_a_turn_takes_at_most_its_cap_of_calls(gateway_factory: Any, pg_home: Path,
                                               ledger_url: str) -> None:
    settings = make_settings(pg_home, ledger_url, max_calls_per_turn=3)
    [key] = new_keys(ledger_url, f"edge-{uuid.uuid4().hex[:6]}", "app")
    api = Api(gateway_factory(settings), key)
    sid, tid = api.session()
    api.call(sid, 1, "list_products")
    api.call(sid, 2, "list_products")
    api.call(sid, 2, "list_products", supersedes=2)  # an amendment is a call too
    error = _refused(api.post(f"/v1/sessions/{sid}/calls", {
        "tool": "demo.list_products", "client_call_id": 4}), 409, "turn_full")
    assert error["details"]["limit"] == 3
    assert len(api.get(f"/v1/sessions/{sid}").json()["turns"][0]["calls"]) == 3
    assert api.commit(sid, tid)["status"] == "committed"


def test_the_connection_stays_usable_after_a_refusal(pg_home: Path, ledger_url: str,
                                                     tmp_path: Path) -> None:
    """A real ``specgate serve``: after a 422 and a 413 on a keep-alive connection, the next
    request on the same connection is served."""
    [key] = new_keys(ledger_url, f"edge-{uuid.uuid4().hex[:6]}", "app")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with local_gateways(pg_home, ledger_url, tmp_path, 1,
                        SPECGATE_MAX_BODY_BYTES=str(LIMIT)) as [gateway]:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        answers, sockets = [], []
        for body in (b'{"metadata": {"a": "\\u0000"}}',
                     b'{"metadata": {"a": "' + b"x" * LIMIT + b'"}}', b"{}"):
            conn.request("POST", "/v1/sessions", body=body, headers=headers)
            sockets.append(conn.sock)
            response = conn.getresponse()
            answers.append((response.status, response.read()))
        conn.close()
    assert all(s is sockets[0] for s in sockets)  # one connection throughout
    assert [status for status, _ in answers] == [422, 413, 201], answers

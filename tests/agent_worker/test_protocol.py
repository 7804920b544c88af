"""The tagged stream: incremental parsing at every split of the input, tolerance of a stream
that stops mid-tag, the checks of ids and tools, and the rendering of injected tags."""

from __future__ import annotations

import pytest

from agent_worker import protocol
from agent_worker.protocol import (
    Answer,
    AnswerStart,
    CallBook,
    Malformed,
    Pause,
    Remove,
    StreamParser,
    Think,
    ToolCall,
)

STEP = ('<think>Ann wants 2 < 3 bags</think>\n'
        '<tool_call>{"id": 1, "name": "demo.create_order", "arguments": {"customer": "Ann"}}'
        '</tool_call> <tool_call>{"id": 2, "name": "demo.add_item", "arguments": '
        '{"order_id": "$1.order_id", "sku": "espresso"}, "depends_on": [1]}</tool_call>'
        '<remove>1</remove><pause/><answer>Done, Ann.</answer>')
EXPECTED = [
    Think("Ann wants 2 < 3 bags"),
    ToolCall(1, "demo.create_order", {"customer": "Ann"}),
    ToolCall(2, "demo.add_item", {"order_id": "$1.order_id", "sku": "espresso"}, (1,)),
    Remove(1), Pause(), AnswerStart(), Answer("Done, Ann."),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50, len(STEP)])
def test_parses_the_same_elements_at_any_split(size: int) -> None:
    parser = StreamParser()
    elements = []
    for start in range(0, len(STEP), size):
        elements += parser.feed(STEP[start:start + size])
    assert elements == EXPECTED
    assert parser.finish() is None
    assert parser.complete_end == len(STEP)


def test_an_element_is_emitted_as_soon_as_its_tag_closes() -> None:
    parser = StreamParser()
    assert parser.feed('<tool_call>{"id": 1, "name": "demo.list_products"}') == []
    assert parser.incomplete == "tool_call"
    assert parser.feed("</tool_call><answer>") == [ToolCall(1, "demo.list_products"),
                                                    AnswerStart()]
    assert parser.incomplete == "answer"


@pytest.mark.parametrize(("text", "incomplete"), [
    ("<think>halfway", "think"),
    ('<think>x</think><tool_call>{"id": 1', "tool_call"),
    ("<answer>Sure", "answer"),
    ("<tool_ca", None),
])
def test_a_stream_stopping_mid_tag_reports_what_is_unfinished(text: str,
                                                              incomplete: str | None) -> None:
    parser = StreamParser()
    parser.feed(text)
    assert parser.incomplete == incomplete
    tail = parser.finish()
    assert isinstance(tail, Malformed) and "stopped inside" in tail.message
    assert parser.complete_end == (len("<think>x</think>") if "x</think>" in text else 0)


def test_think_closed_by_the_runtime_marker() -> None:
    parser = StreamParser()
    assert parser.feed("<think>a</think_interrupted>") == [Think("a", interrupted=True)]


@pytest.mark.parametrize(("text", "message"), [
    ("<tool_call>{nope}</tool_call>", "valid JSON"),
    ("<tool_call>[1]</tool_call>", "JSON object"),
    ('<tool_call>{"id": 0, "name": "x"}</tool_call>', "integer \"id\""),
    ('<tool_call>{"id": 1}</tool_call>', "tool \"name\""),
    ('<tool_call>{"id": 1, "name": "x", "args": {}}</tool_call>', "unknown field 'args'"),
    ('<tool_call>{"id": 1, "name": "x", "arguments": []}</tool_call>', "must be an object"),
    ('<tool_call>{"id": 1, "name": "x", "depends_on": ["a"]}</tool_call>', "list of call ids"),
    ("<remove>one</remove>", "one call id"),
    ("<pause>now</pause>", "takes no content"),
    ("<shout>hi</shout>", "unknown tag '<shout>'"),
    ('<cancelled id="1">x</cancelled>', "written by the runtime"),
    ("hello <pause/>", "text outside a tag"),
    ("<" + "x" * 40, "unterminated tag"),
])
def test_malformed_output_becomes_an_element_and_stops_parsing(text: str, message: str) -> None:
    parser = StreamParser()
    elements = parser.feed(text + "<pause/>")
    assert isinstance(elements[-1], Malformed), elements
    assert message in elements[-1].message
    assert parser.broken and parser.feed("<pause/>") == []


def test_the_book_checks_ids_and_tools() -> None:
    book = CallBook(tools={"demo.a", "demo.b"})
    parser = StreamParser(book=book)
    ok = parser.feed('<tool_call>{"id": 2, "name": "demo.a"}</tool_call>'
                     '<tool_call>{"id": 3, "name": "demo.b", "arguments": {"x": "$2.y"}}'
                     '</tool_call><tool_call>{"id": 2, "name": "demo.b"}</tool_call>')
    assert [e.id for e in ok if isinstance(e, ToolCall)] == [2, 3, 2]  # the last one amends
    assert book.issued == {2, 3}
    cases = {
        '{"id": 1, "name": "demo.a"}': "greater than 3",
        '{"id": 4, "name": "demo.zzz"}': "unknown tool 'demo.zzz'",
        '{"id": 4, "name": "demo.a", "depends_on": [9]}': "depends on call 9",
        '{"id": 4, "name": "demo.a", "arguments": {"x": "$9"}}': "depends on call 9",
        '{"id": 4, "name": "demo.a", "depends_on": [4]}': "cannot depend on itself",
    }
    for body, message in cases.items():
        [element] = StreamParser(book=book).feed(f"<tool_call>{body}</tool_call>")
        assert isinstance(element, Malformed) and message in element.message, body
    assert StreamParser(book=book).feed("<remove>3</remove>") == [Remove(3)]
    [again] = StreamParser(book=book).feed("<remove>3</remove>")
    assert isinstance(again, Malformed) and "was removed" in again.message
    book.frozen.add(2)
    [frozen] = StreamParser(book=book).feed('<tool_call>{"id": 2, "name": "demo.a"}</tool_call>')
    assert isinstance(frozen, Malformed) and "committed" in frozen.message


def test_placeholders_are_dependencies() -> None:
    call = ToolCall(5, "t", {"a": "$1.x", "b": ["$3"], "c": "$$4", "d": "$1"}, (2,))
    assert call.dependencies() == (2, 1, 3)


def test_rendering_and_reading_back_injected_tags() -> None:
    text = "".join([
        protocol.render_update("I'd like", final=False),
        protocol.render_update("a kettle.", final=True),
        protocol.render_observation(3, {"ok": True, "name": "Zoë"}),
        protocol.render_cancelled(4, "call 3 was removed"),
        protocol.render_error("bad JSON"),
    ])
    assert text == ('<partial_query_update>I\'d like</partial_query_update>'
                    '<final_query_update>a kettle.</final_query_update>'
                    '<observation id="3">{"ok":true,"name":"Zoë"}</observation>'
                    '<cancelled id="4">call 3 was removed</cancelled><error>bad JSON</error>')
    kinds = [(i.kind, i.call_id) for i in protocol.read_injected(text)]
    assert kinds == [("partial_query_update", None), ("final_query_update", None),
                     ("observation", 3), ("cancelled", 4), ("error", None)]
    rendered = protocol.render_tool_call(ToolCall(1, "demo.a", {"x": 1}, (2,)))
    assert protocol.parse_all(rendered) == [ToolCall(1, "demo.a", {"x": 1}, (2,))]

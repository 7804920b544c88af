"""The tool SDK: schema generation, validation, invocation, and decoration-time rules."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import subprocess
import sys
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tool_adapters.sdk import (
    Adapter,
    Effect,
    Runner,
    ToolContext,
    ToolError,
    ToolFailed,
    ToolRetry,
    ToolSpec,
    tool,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class Address(pydantic.BaseModel):
    street: str
    city: str


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Receipt(pydantic.BaseModel):
    order_id: str
    total: Decimal
    placed_at: dt.datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


def make_ctx(**overrides: Any) -> ToolContext:
    values: dict[str, Any] = {
        "call_id": "call-1",
        "idempotency_key": "idem-1",
        "tenant": "acme",
        "session_id": "sess-1",
        "turn_id": "turn-1",
    }
    return ToolContext(**(values | overrides))


@tool(effect="reversible", timeout_s=5)
def ship_order(
    ctx: ToolContext,
    order_id: str,
    items: list[str],
    address: Address,
    speed: Literal["standard", "express"] = "standard",
    note: str | None = None,
    color: Color = Color.RED,
    *,
    gift: Annotated[bool, pydantic.Field(description="Wrap it as a gift.")] = False,
) -> dict[str, Any]:
    """Ship an order to an address.

    Only orders that are paid can ship.

    Args:
        order_id: The order to ship.
        items: SKUs to put in the box.
        address: Where to send it.
        speed: How fast to ship.
        note: A note for the courier.
        gift: This description loses to the Annotated one.

    Returns:
        The shipment.
    """
    return {
        "order_id": order_id,
        "items": items,
        "city": address.city,
        "speed": speed,
        "note": note,
        "color": color,
        "gift": gift,
        "tenant": ctx.tenant,
    }


SHIP_ARGS = {
    "order_id": "o-1",
    "items": ["a", "b"],
    "address": {"street": "1 Main St", "city": "Springfield"},
}


# --- schema -------------------------------------------------------------------------------


def test_description_is_docstring_without_sections() -> None:
    expected = "Ship an order to an address.\n\nOnly orders that are paid can ship."
    assert ship_order.description == expected
    assert "Args" not in ship_order.description
    assert "Returns" not in ship_order.description


def test_schema_properties_from_hints_and_docstring() -> None:
    schema = ship_order.parameters
    props = schema["properties"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert list(props) == ["order_id", "items", "address", "speed", "note", "color", "gift"]
    assert props["order_id"] == {"type": "string", "description": "The order to ship."}
    assert props["items"]["type"] == "array"
    assert props["items"]["items"] == {"type": "string"}
    assert props["items"]["description"] == "SKUs to put in the box."


def test_schema_required_vs_defaults() -> None:
    schema = ship_order.parameters
    assert schema["required"] == ["order_id", "items", "address"]
    assert schema["properties"]["speed"]["default"] == "standard"
    assert schema["properties"]["note"]["default"] is None
    assert schema["properties"]["gift"]["default"] is False


def test_schema_literal_enum_and_optional() -> None:
    props = ship_order.parameters["properties"]
    assert props["speed"]["enum"] == ["standard", "express"]
    assert {"type": "null"} in props["note"]["anyOf"]
    assert {"type": "string"} in props["note"]["anyOf"]
    color_ref = props["color"]["$ref"].rsplit("/", 1)[-1]
    assert ship_order.parameters["$defs"][color_ref]["enum"] == ["red", "blue"]


def test_schema_nested_model() -> None:
    schema = ship_order.parameters
    ref = schema["properties"]["address"]["$ref"].rsplit("/", 1)[-1]
    nested = schema["$defs"][ref]
    assert set(nested["properties"]) == {"street", "city"}
    assert nested["required"] == ["street", "city"]


def test_annotated_description_wins_over_docstring() -> None:
    assert ship_order.parameters["properties"]["gift"]["description"] == "Wrap it as a gift."


def test_no_auto_titles_and_no_ctx() -> None:
    schema = ship_order.parameters
    assert "title" not in schema
    assert all("title" not in prop for prop in schema["properties"].values())
    assert "ctx" not in schema["properties"]


def test_no_arguments_tool_has_empty_closed_schema() -> None:
    @tool(effect="safe")
    def ping(ctx: ToolContext) -> str:
        """Check the backend is up."""
        return "pong"

    assert ping.parameters["properties"] == {}
    assert ping.parameters["required"] == []
    assert ping.parameters["additionalProperties"] is False
    assert ping.invoke(make_ctx(), {}) == "pong"


def test_numpy_docstring_is_accepted() -> None:
    @tool(effect="safe")
    def count(ctx, limit: int = 10) -> int:
        """Count things.

        Parameters
        ----------
        limit : int
            At most this many.
        """
        return limit

    assert count.description == "Count things."
    assert count.parameters["properties"]["limit"]["description"] == "At most this many."


def test_parameters_named_like_pydantic_attributes() -> None:
    @tool(effect="safe")
    def dump(ctx: ToolContext, schema: str, copy: int = 1) -> list[Any]:
        """Names that a plain pydantic model would shadow."""
        return [schema, copy]

    assert set(dump.parameters["properties"]) == {"schema", "copy"}
    assert dump.validate({"schema": "s"}) == {"schema": "s", "copy": 1}
    assert dump.invoke(make_ctx(), {"schema": "s", "copy": 2}) == ["s", 2]


def test_defaults_and_metadata() -> None:
    assert ship_order.name == "ship_order"
    assert ship_order.effect is Effect.REVERSIBLE
    assert ship_order.runner is Runner.DB
    assert ship_order.requires_approval is False
    assert ship_order.timeout_s == 5.0
    assert isinstance(ship_order.timeout_s, float)
    assert issubclass(ship_order.args_model, pydantic.BaseModel)


def test_explicit_name_and_enum_members() -> None:
    @tool(effect=Effect.SENSITIVE, runner=Runner.TASK, name="send_sms", requires_approval=True)
    def _send(ctx: ToolContext, to: str) -> None:
        """Send a text."""

    assert _send.name == "send_sms"
    assert _send.effect == "sensitive"
    assert _send.runner is Runner.TASK
    assert _send.requires_approval is True


# --- validate -----------------------------------------------------------------------------


def test_validate_returns_typed_values() -> None:
    values = ship_order.validate(SHIP_ARGS)
    assert isinstance(values["address"], Address)
    assert values["address"].city == "Springfield"
    assert values["speed"] == "standard"
    assert values["color"] is Color.RED
    assert values["gift"] is False


def test_validate_dataclass_param_arrives_as_instance() -> None:
    @tool(effect="safe")
    def move(ctx: ToolContext, to: Point) -> Point:
        """Move somewhere."""
        return to

    assert move.validate({"to": {"x": 1, "y": 2}}) == {"to": Point(1, 2)}
    assert move.invoke(make_ctx(), {"to": {"x": 1, "y": 2}}) == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    ("arguments", "error_type"),
    [
        (SHIP_ARGS | {"surprise": 1}, "extra_forbidden"),
        (SHIP_ARGS | {"items": "not-a-list"}, "list_type"),
        (SHIP_ARGS | {"order_id": 123}, "string_type"),
        (SHIP_ARGS | {"speed": "teleport"}, "literal_error"),
        (SHIP_ARGS | {"address": {"street": "x"}}, "missing"),
        ({k: v for k, v in SHIP_ARGS.items() if k != "order_id"}, "missing"),
    ],
)
def test_validate_rejects_bad_arguments(arguments: dict[str, Any], error_type: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        ship_order.validate(arguments)
    assert error_type in {error["type"] for error in caught.value.errors()}


def test_validation_errors_use_parameter_names() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        ship_order.validate({"items": [], "address": SHIP_ARGS["address"]})
    assert caught.value.errors()[0]["loc"] == ("order_id",)


def test_validate_rejects_non_mapping() -> None:
    with pytest.raises(pydantic.ValidationError):
        ship_order.validate(["o-1"])  # type: ignore[arg-type]


# --- invoke and hooks ---------------------------------------------------------------------


def test_invoke_returns_jsonable() -> None:
    result = ship_order.invoke(make_ctx(tenant="globex"), SHIP_ARGS | {"gift": True})
    assert result == {
        "order_id": "o-1",
        "items": ["a", "b"],
        "city": "Springfield",
        "speed": "standard",
        "note": None,
        "color": "red",
        "gift": True,
        "tenant": "globex",
    }


def test_invoke_converts_model_decimal_datetime() -> None:
    placed = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)

    @tool(effect="safe")
    def receipt(ctx: ToolContext, order_id: str) -> Receipt:
        """Fetch a receipt."""
        return Receipt(order_id=order_id, total=Decimal("12.50"), placed_at=placed)

    assert receipt.invoke(make_ctx(), {"order_id": "o-9"}) == {
        "order_id": "o-9",
        "total": "12.50",
        "placed_at": "2024-05-01T12:30:00Z",
    }


def test_calling_spec_calls_function_unchanged() -> None:
    ctx = make_ctx()
    result = ship_order(ctx, "o-1", ["a"], Address(street="s", city="c"), gift=True)
    assert result["color"] is Color.RED  # raw, not jsonable: the plain function ran
    assert result["gift"] is True


def test_tool_errors_propagate_from_invoke() -> None:
    @tool(effect="safe")
    def find(ctx: ToolContext, order_id: str) -> None:
        """Find an order."""
        raise ToolRetry(f"no order {order_id!r}; ask the caller to spell it")

    with pytest.raises(ToolRetry) as caught:
        find.invoke(make_ctx(), {"order_id": "x"})
    assert caught.value.code == "tool_retry"


def undo_refund(ctx: ToolContext, order_id: str, amount: Decimal, *, result: Any) -> dict[str, Any]:
    return {"undone": order_id, "amount": amount, "result": result}


def check_transfer(ctx: ToolContext, account: str) -> str:
    if account == "closed":
        raise ToolFailed("the account is closed")
    return "ok"


@tool(effect="reversible", runner="task", compensate=undo_refund)
def refund(ctx: ToolContext, order_id: str, amount: Decimal) -> dict[str, Any]:
    """Refund an order through the payment provider."""
    return {"refund_id": "r-1"}


@tool(effect="sensitive", runner="task", preflight=check_transfer)
def transfer(ctx: ToolContext, account: str) -> str:
    """Move money; cannot be taken back."""
    return "sent"


def test_run_compensate_passes_arguments_and_result() -> None:
    arguments = {"order_id": "o-1", "amount": "5.10"}
    out = refund.run_compensate(make_ctx(), arguments, {"refund_id": "r-1"})
    assert out == {"undone": "o-1", "amount": "5.10", "result": {"refund_id": "r-1"}}


def test_run_preflight() -> None:
    assert transfer.run_preflight(make_ctx(), {"account": "a-1"}) == "ok"
    with pytest.raises(ToolFailed, match="closed"):
        transfer.run_preflight(make_ctx(), {"account": "closed"})


def test_hooks_are_none_safe() -> None:
    assert ship_order.run_preflight(make_ctx(), SHIP_ARGS) is None
    assert ship_order.run_compensate(make_ctx(), SHIP_ARGS, {"x": 1}) is None


# --- frozen spec and public schema ---------------------------------------------------------


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ship_order.effect = Effect.SAFE  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ship_order.name = "other"  # type: ignore[misc]


def test_public_schema() -> None:
    public = ship_order.public_schema()
    keys = {"name", "description", "effect", "runner", "requires_approval", "parameters"}
    assert set(public) == keys
    assert public["effect"] == "reversible"
    assert type(public["effect"]) is str  # plain JSON, not the enum
    assert "ctx" not in public["parameters"]["properties"]
    assert "ctx" not in str(public)


def test_public_schema_is_a_copy() -> None:
    public = ship_order.public_schema()
    public["parameters"]["properties"].clear()
    public["name"] = "crm.ship_order"
    assert "order_id" in ship_order.parameters["properties"]
    assert ship_order.public_schema()["name"] == "ship_order"


# --- decoration-time errors ----------------------------------------------------------------


def _plain(ctx: ToolContext, x: int) -> int:
    """A plain function for decoration tests."""
    return x


def test_missing_effect() -> None:
    with pytest.raises(TypeError, match="effect"):
        tool()(_plain)  # type: ignore[call-overload]


def test_bare_decorator_is_refused() -> None:
    with pytest.raises(TypeError, match="effect"):
        tool(_plain)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"effect": "dangerous"}, "effect must be one of"),
        ({"effect": None}, "effect must be one of"),
        ({"effect": "safe", "runner": "thread"}, "runner must be one of"),
        ({"effect": "reversible", "runner": "task"}, "needs compensate="),
        ({"effect": "reversible", "compensate": undo_refund}, "compensate= is only"),
        ({"effect": "safe", "compensate": undo_refund}, "compensate= is only"),
        ({"effect": "sensitive", "runner": "task", "compensate": undo_refund}, "is only"),
        ({"effect": "safe", "preflight": check_transfer}, "preflight= is only"),
        ({"effect": "reversible", "preflight": check_transfer}, "preflight= is only"),
        ({"effect": "safe", "timeout_s": 0}, "timeout_s"),
        ({"effect": "safe", "timeout_s": -1.5}, "timeout_s"),
        ({"effect": "safe", "timeout_s": float("inf")}, "timeout_s"),
        ({"effect": "safe", "requires_approval": "yes"}, "requires_approval"),
        ({"effect": "safe", "name": "Bad-Name"}, "must match"),
        ({"effect": "safe", "name": "9lives"}, "must match"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match) as caught:
        tool(**options)(_plain)
    assert "'_plain'" in str(caught.value)


def test_missing_annotation() -> None:
    def lookup(ctx: ToolContext, order_id) -> None:  # type: ignore[no-untyped-def]
        """Look up."""

    with pytest.raises(TypeError, match=r"'lookup'.*'order_id' needs a type annotation"):
        tool(effect="safe")(lookup)


def test_first_parameter_must_be_ctx() -> None:
    def lookup(order_id: str) -> None:
        """Look up."""

    with pytest.raises(TypeError, match=r"'lookup'.*first parameter must be `ctx`"):
        tool(effect="safe")(lookup)

    def nothing() -> None:
        """No parameters at all."""

    with pytest.raises(TypeError, match="first parameter must be `ctx`"):
        tool(effect="safe")(nothing)


def test_ctx_with_wrong_annotation() -> None:
    def lookup(ctx: dict, order_id: str) -> None:  # type: ignore[type-arg]
        """Look up."""

    with pytest.raises(TypeError, match="ToolContext"):
        tool(effect="safe")(lookup)


@pytest.mark.parametrize("signature", ["ctx, *args: int", "ctx, **kwargs: int", "ctx, x: int, /"])
def test_var_and_positional_only_parameters_are_refused(signature: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def lookup({signature}) -> None:\n    'Look up.'", namespace)  # noqa: S102
    with pytest.raises(TypeError, match="'lookup'"):
        tool(effect="safe")(namespace["lookup"])


def test_keyword_only_parameters_are_allowed() -> None:
    @tool(effect="safe")
    def search(ctx: ToolContext, *, query: str, limit: int = 5) -> list[Any]:
        """Search."""
        return [query, limit]

    assert search.parameters["required"] == ["query"]
    assert search.invoke(make_ctx(), {"query": "q"}) == ["q", 5]


def test_async_tools_are_refused() -> None:
    async def lookup(ctx: ToolContext) -> None:
        """Look up."""

    with pytest.raises(TypeError, match="async"):
        tool(effect="safe")(lookup)


def test_docstring_documenting_unknown_parameter() -> None:
    def lookup(ctx: ToolContext, order_id: str) -> None:
        """Look up.

        Args:
            order_number: renamed long ago.
        """

    with pytest.raises(TypeError, match="order_number"):
        tool(effect="safe")(lookup)


def test_hook_signature_is_checked() -> None:
    def undo(ctx: ToolContext, order_id: str) -> None:  # no result=, no amount
        """Undo."""

    with pytest.raises(TypeError, match=r"compensate hook 'undo' must accept"):
        tool(effect="reversible", runner="task", compensate=undo)(refund.fn)


def test_field_alias_is_refused() -> None:
    def lookup(ctx: ToolContext, order_id: Annotated[str, pydantic.Field(alias="id")]) -> None:
        """Look up."""

    with pytest.raises(TypeError, match="alias"):
        tool(effect="safe")(lookup)


def test_unsupported_type_is_refused() -> None:
    def lookup(ctx: ToolContext, conn: sa.Engine) -> None:
        """Look up."""

    with pytest.raises(TypeError, match="'lookup'"):
        tool(effect="safe")(lookup)


# --- context and errors --------------------------------------------------------------------


def test_context_session_requires_db() -> None:
    ctx = make_ctx()
    assert ctx.logger is logging.getLogger("specgate.tool")
    assert ctx.settings == {}
    with pytest.raises(ToolFailed, match="no database session"):
        _ = ctx.session


def test_context_session_returns_db() -> None:
    engine = sa.create_engine("sqlite://")
    with Session(engine) as session:
        assert make_ctx(db=session).session is session


def test_context_repr_hides_settings() -> None:
    assert "hunter2" not in repr(make_ctx(settings={"api_key": "hunter2"}))


def test_error_tree() -> None:
    retry, failed = ToolRetry("fix the date"), ToolFailed("account closed")
    assert isinstance(retry, ToolError) and isinstance(failed, ToolError)
    assert (retry.code, retry.message, str(retry)) == ("tool_retry", "fix the date", "fix the date")
    assert (failed.code, str(failed)) == ("tool_failed", "account closed")
    assert not isinstance(retry, ToolFailed)


# --- adapter -------------------------------------------------------------------------------


def test_adapter_lookup_and_qualified_names() -> None:
    metadata = sa.MetaData()
    adapter = Adapter(name="shop", tools=(ship_order, refund), metadata=metadata)
    assert adapter.tool("refund") is refund
    assert adapter.qualified_names == ["shop.ship_order", "shop.refund"]
    with pytest.raises(KeyError, match="ship_order, refund"):
        adapter.tool("nope")


def test_adapter_rejects_duplicate_tool_names() -> None:
    @tool(effect="safe", name="ship_order")
    def other(ctx: ToolContext) -> None:
        """Another tool with a taken name."""

    with pytest.raises(ValueError, match="duplicate tool names"):
        Adapter(name="shop", tools=(ship_order, other))


def test_adapter_rejects_bad_name_and_non_specs() -> None:
    with pytest.raises(ValueError, match="must match"):
        Adapter(name="Shop", tools=())
    with pytest.raises(TypeError, match="not a @tool"):
        Adapter(name="shop", tools=(_plain,))  # type: ignore[arg-type]


def test_adapter_is_frozen() -> None:
    adapter = Adapter(name="shop", tools=[ship_order])  # type: ignore[arg-type]
    assert adapter.tools == (ship_order,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        adapter.name = "x"  # type: ignore[misc]


def test_spec_type() -> None:
    assert isinstance(ship_order, ToolSpec)


# --- independence from the gateway ---------------------------------------------------------


def test_sdk_does_not_import_gateway() -> None:
    code = "import sys, tool_adapters.sdk; assert 'gateway' not in sys.modules, sorted(sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr

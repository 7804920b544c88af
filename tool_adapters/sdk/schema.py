"""Turning a typed tool function into an argument model and the JSON schema the model sees.

The signature is the single source of truth: types and defaults come from it, descriptions from
``Annotated[..., Field(description=...)]`` or else from the docstring's Args section. The model
validates what the LLM sends *before* anything runs, so a tool body only ever sees typed values.

Argument fields are stored under neutral internal names (``arg_0``...) with the parameter name as
alias, so parameters called ``schema``, ``copy`` or ``_x`` cannot clash with pydantic's own
attributes; callers only ever see the aliases.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, get_args, get_origin

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import CoreSchema, to_jsonable_python

_ALIAS_SETTINGS = ("alias", "validation_alias", "serialization_alias")


class _UntitledFields(GenerateJsonSchema):
    """Leaves out pydantic's automatic field titles ("Order Id"): tokens the LLM doesn't need."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def parse_docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """Split ``fn``'s docstring into the tool description and per-argument descriptions.

    Google style is the house style; numpy and reST are detected too. Args/Returns/Raises
    sections are dropped from the description because the schema already carries them.
    """
    parsed = docstring_parser.parse(inspect.getdoc(fn) or "")
    description = (parsed.description or "").strip()
    params = {p.arg_name: (p.description or "").strip() for p in parsed.params}
    return description, {name: text for name, text in params.items() if text}


def _annotated_description(hint: Any) -> str | None:
    """The description set through ``Annotated[..., Field(description=...)]``, if any."""
    if get_origin(hint) is not Annotated:
        return None
    for meta in reversed(get_args(hint)[1:]):
        if isinstance(meta, FieldInfo) and meta.description is not None:
            return meta.description
    return None


def _check_no_alias(fn_name: str, param: str, hint: Any) -> None:
    """Refuse aliases: the parameter name *is* the argument name, so the two never drift apart."""
    if get_origin(hint) is not Annotated:
        return
    for meta in get_args(hint)[1:]:
        if isinstance(meta, FieldInfo) and any(getattr(meta, a) for a in _ALIAS_SETTINGS):
            raise TypeError(
                f"tool {fn_name!r}: parameter {param!r} sets a Field alias; "
                "rename the parameter instead"
            )


def _field(param: inspect.Parameter, hint: Any, doc: str | None) -> tuple[Any, FieldInfo]:
    """One ``create_model`` field definition for ``param``, aliased to its own name."""
    kwargs: dict[str, Any] = {"alias": param.name}
    if param.default is not inspect.Parameter.empty:
        kwargs["default"] = param.default
    if doc and _annotated_description(hint) is None:
        kwargs["description"] = doc
    return hint, Field(**kwargs)


def model_name(tool_name: str) -> str:
    """``lookup_order`` → ``LookupOrderArguments``, the name shown in validation errors."""
    words = [w for w in re.split(r"_+", tool_name) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) + "Arguments"


def build_args_model(
    fn: Callable[..., Any],
    tool_name: str,
    params: Sequence[inspect.Parameter],
    hints: Mapping[str, Any],
    docs: Mapping[str, str],
) -> type[BaseModel]:
    """Build the pydantic model for ``params`` (everything after ``ctx``), refusing bad types."""
    fields: dict[str, Any] = {}
    for index, param in enumerate(params):
        hint = hints[param.name]
        if isinstance(param.default, FieldInfo):
            raise TypeError(
                f"tool {fn.__name__!r}: parameter {param.name!r} uses `= Field(...)`; "
                "use Annotated[T, Field(...)] so direct calls still get a real default"
            )
        _check_no_alias(fn.__name__, param.name, hint)
        fields[f"arg_{index}"] = _field(param, hint, docs.get(param.name))
    config = ConfigDict(extra="forbid", protected_namespaces=())
    try:
        return create_model(
            model_name(tool_name), __config__=config, __module__=fn.__module__, **fields
        )
    except Exception as error:  # pydantic raises several types; the author needs only one
        raise TypeError(f"tool {fn.__name__!r}: cannot build argument model: {error}") from error


def json_schema(model: type[BaseModel], fn_name: str) -> dict[str, Any]:
    """The argument schema shown to the LLM: a closed object, ``required`` always present."""
    try:
        schema = model.model_json_schema(by_alias=True, schema_generator=_UntitledFields)
    except Exception as error:  # e.g. a type pydantic validates but cannot describe
        raise TypeError(f"tool {fn_name!r}: cannot build JSON schema: {error}") from error
    schema.pop("title", None)
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    schema["additionalProperties"] = False
    return schema


def validate_arguments(model: type[BaseModel], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``arguments`` and return them keyed by parameter name, as typed python values.

    Values are read off the model rather than dumped, so a parameter typed as a pydantic model
    or dataclass arrives as an instance of it. Raises ``pydantic.ValidationError``.
    """
    data = dict(arguments) if isinstance(arguments, Mapping) else arguments  # else: model_type
    instance = model.model_validate(data)
    return {
        info.alias or name: getattr(instance, name) for name, info in model.model_fields.items()
    }


def to_jsonable(value: Any) -> Any:
    """Convert a tool result (models, dataclasses, datetimes, Decimals...) to JSON-ready data."""
    return to_jsonable_python(value)

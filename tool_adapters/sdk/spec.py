"""The ``@tool`` decorator and the frozen ``ToolSpec`` it returns.

A tool is a typed function whose first parameter is ``ctx``. Everything the gateway needs to run
it safely — effect class, runner, hooks, timeout, argument schema — is fixed here, at import
time, so a misdeclared tool fails when its adapter loads rather than in the middle of a call::

    @tool(effect="reversible")
    def cancel_order(ctx: ToolContext, order_id: str, reason: str | None = None) -> Order:
        '''Cancel an order that has not shipped yet.

        Args:
            order_id: The order's id, as read back to the caller.
            reason: Why the caller wants to cancel, in their words.
        '''
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from tool_adapters.sdk.context import ToolContext
from tool_adapters.sdk.schema import (
    build_args_model,
    json_schema,
    parse_docstring,
    to_jsonable,
    validate_arguments,
)

NAME_PATTERN = re.compile(r"[a-z_][a-z0-9_]*")
"""Tool and adapter names: they end up in qualified names (``adapter.tool``) and LLM schemas."""

_E = TypeVar("_E", bound=StrEnum)


class Effect(StrEnum):
    """What a call does to the world; decides when the gateway runs it and how it is undone."""

    SAFE = "safe"  # reads only
    REVERSIBLE = "reversible"  # writes that can be undone
    SENSITIVE = "sensitive"  # writes that cannot be taken back once done


class Runner(StrEnum):
    """Where the tool body runs."""

    DB = "db"  # inside the gateway's transaction on the adapter's database (``ctx.db``)
    TASK = "task"  # outside any transaction (e.g. an HTTP call); undone only by ``compensate``


@dataclass(frozen=True, slots=True, eq=False)
class ToolSpec:
    """A declared tool: immutable, so nothing at runtime can change its effect class or schema.

    Equality is identity: two specs are the same tool only if they are the same object.
    Calling the spec calls the plain function, which keeps tests and benchmarks direct.
    """

    name: str
    description: str = field(repr=False)
    effect: Effect
    runner: Runner
    requires_approval: bool
    timeout_s: float
    fn: Callable[..., Any] = field(repr=False)
    compensate: Callable[..., Any] | None = field(repr=False)
    preflight: Callable[..., Any] | None = field(repr=False)
    parameters: dict[str, Any] = field(repr=False)
    args_model: type[BaseModel] = field(repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Typed keyword arguments for ``fn``; raises ``pydantic.ValidationError`` on bad input."""
        return validate_arguments(self.args_model, arguments)

    def invoke(self, ctx: ToolContext, arguments: Mapping[str, Any]) -> Any:
        """Validate, run the tool, and return its result as JSON-compatible data."""
        return to_jsonable(self.fn(ctx, **self.validate(arguments)))

    def run_preflight(self, ctx: ToolContext, arguments: Mapping[str, Any]) -> Any:
        """Run the preflight check (sensitive tools) with the call's arguments; no-op if unset."""
        if self.preflight is None:
            return None
        return to_jsonable(self.preflight(ctx, **self.validate(arguments)))

    def run_compensate(self, ctx: ToolContext, arguments: Mapping[str, Any], result: Any) -> Any:
        """Undo a finished call, given its arguments and recorded ``result``; no-op if unset."""
        if self.compensate is None:
            return None
        return to_jsonable(self.compensate(ctx, **self.validate(arguments), result=result))

    def public_schema(self) -> dict[str, Any]:
        """What callers may see about the tool (a fresh copy: callers are free to edit it)."""
        return {
            "name": self.name,
            "description": self.description,
            "effect": self.effect.value,
            "runner": self.runner.value,
            "requires_approval": self.requires_approval,
            "parameters": copy.deepcopy(self.parameters),
        }


@dataclass(frozen=True, slots=True)
class _Options:
    """The decorator's keyword arguments, carried unchecked until the function is known."""

    effect: Effect | str
    runner: Runner | str
    requires_approval: bool
    compensate: Callable[..., Any] | None
    preflight: Callable[..., Any] | None
    timeout_s: float
    name: str | None


@overload
def tool(
    fn: Callable[..., Any],
    *,
    effect: Effect | str,
    runner: Runner | str = ...,
    requires_approval: bool = ...,
    compensate: Callable[..., Any] | None = ...,
    preflight: Callable[..., Any] | None = ...,
    timeout_s: float = ...,
    name: str | None = ...,
) -> ToolSpec: ...


@overload
def tool(
    fn: None = None,
    *,
    effect: Effect | str,
    runner: Runner | str = ...,
    requires_approval: bool = ...,
    compensate: Callable[..., Any] | None = ...,
    preflight: Callable[..., Any] | None = ...,
    timeout_s: float = ...,
    name: str | None = ...,
) -> Callable[[Callable[..., Any]], ToolSpec]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    effect: Effect | str,
    runner: Runner | str = "db",
    requires_approval: bool = False,
    compensate: Callable[..., Any] | None = None,
    preflight: Callable[..., Any] | None = None,
    timeout_s: float = 10.0,
    name: str | None = None,
) -> ToolSpec | Callable[[Callable[..., Any]], ToolSpec]:
    """Declare a tool: ``@tool(effect=...)``. ``effect`` has no default on purpose — every
    author must decide whether the tool reads, writes reversibly, or does something final.

    All rules are checked here and broken ones raise ``TypeError`` naming the function.
    """
    options = _Options(effect, runner, requires_approval, compensate, preflight, timeout_s, name)

    def decorate(function: Callable[..., Any]) -> ToolSpec:
        return _build_spec(function, options)

    return decorate if fn is None else decorate(fn)


def _build_spec(fn: Callable[..., Any], options: _Options) -> ToolSpec:
    label = _label(fn)
    if not callable(fn) or isinstance(fn, ToolSpec):
        raise TypeError(f"@tool must decorate a plain function, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {label!r}: async functions are not supported; make it sync")
    name = _check_name(label, options.name or label)
    effect = _coerce(Effect, options.effect, "effect", label)
    runner = _coerce(Runner, options.runner, "runner", label)
    _check_policy(label, effect, runner, options)
    params, hints = _arguments(fn, label)
    description, docs = parse_docstring(fn)
    _check_documented(label, params, docs)
    names = [param.name for param in params]
    _check_hook(label, "preflight", options.preflight, names)
    _check_hook(label, "compensate", options.compensate, [*names, "result"])
    model = build_args_model(fn, name, params, hints, docs)
    return ToolSpec(
        name=name,
        description=description,
        effect=effect,
        runner=runner,
        requires_approval=options.requires_approval,
        timeout_s=float(options.timeout_s),
        fn=fn,
        compensate=options.compensate,
        preflight=options.preflight,
        parameters=json_schema(model, label),
        args_model=model,
    )


def _label(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", repr(fn)))


def _check_name(label: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise TypeError(
            f"tool {label!r}: name {name!r} must match {NAME_PATTERN.pattern!r} "
            "(lowercase letters, digits, underscores)"
        )
    return name


def _coerce(enum_type: type[_E], value: object, what: str, label: str) -> _E:
    try:
        return enum_type(value)  # type: ignore[arg-type]  # checked by the except
    except (ValueError, TypeError):
        choices = ", ".join(repr(member.value) for member in enum_type)
        raise TypeError(f"tool {label!r}: {what} must be one of {choices}, got {value!r}") from None


def _check_policy(label: str, effect: Effect, runner: Runner, options: _Options) -> None:
    """Hooks must match the effect class: a missing undo or a hook that never runs is a bug."""
    compensated = effect is Effect.REVERSIBLE and runner is Runner.TASK
    if compensated and options.compensate is None:
        raise TypeError(
            f"tool {label!r}: effect='reversible' with runner='task' needs compensate=, "
            "since no transaction can undo a task"
        )
    if not compensated and options.compensate is not None:
        raise TypeError(
            f"tool {label!r}: compensate= is only for effect='reversible', runner='task' "
            f"(this tool is effect={effect.value!r}, runner={runner.value!r})"
        )
    if options.preflight is not None and effect is not Effect.SENSITIVE:
        raise TypeError(f"tool {label!r}: preflight= is only for effect='sensitive' tools")
    if not isinstance(options.requires_approval, bool):
        raise TypeError(f"tool {label!r}: requires_approval must be a bool")
    timeout = options.timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
        math.isfinite(timeout) and timeout > 0
    ):
        raise TypeError(f"tool {label!r}: timeout_s must be a positive number, got {timeout!r}")


def _type_hints(fn: Callable[..., Any], label: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception as error:  # NameError for unresolvable forward references, among others
        raise TypeError(f"tool {label!r}: cannot resolve type hints: {error}") from error


def _arguments(
    fn: Callable[..., Any], label: str
) -> tuple[list[inspect.Parameter], dict[str, Any]]:
    """The parameters after ``ctx`` and the resolved hints, checking the call convention."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as error:
        raise TypeError(f"tool {label!r}: cannot read its signature: {error}") from error
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].name != "ctx" or params[0].kind not in positional:
        raise TypeError(f"tool {label!r}: the first parameter must be `ctx` (a ToolContext)")
    hints = _type_hints(fn, label)
    ctx_hint = hints.get("ctx", ToolContext)
    if not (isinstance(ctx_hint, type) and issubclass(ctx_hint, ToolContext)):
        raise TypeError(f"tool {label!r}: `ctx` must be annotated ToolContext or not at all")
    for param in params[1:]:
        _check_parameter(label, param, hints)
    return params[1:], hints


def _check_parameter(label: str, param: inspect.Parameter, hints: Mapping[str, Any]) -> None:
    """Arguments arrive by name from a JSON object, so each must be named and typed."""
    if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        raise TypeError(
            f"tool {label!r}: *args/**kwargs ({param.name!r}) are not allowed; "
            "declare each argument so it gets a schema"
        )
    if param.kind is inspect.Parameter.POSITIONAL_ONLY:
        raise TypeError(
            f"tool {label!r}: parameter {param.name!r} is positional-only; "
            "arguments are passed by name"
        )
    if param.name not in hints:
        raise TypeError(f"tool {label!r}: parameter {param.name!r} needs a type annotation")


def _check_documented(
    label: str, params: Sequence[inspect.Parameter], docs: Mapping[str, str]
) -> None:
    """A documented argument that doesn't exist is usually a rename the docstring missed."""
    unknown = sorted(set(docs) - {param.name for param in params} - {"ctx"})
    if unknown:
        raise TypeError(f"tool {label!r}: docstring documents unknown parameters {unknown}")


def _check_hook(
    label: str, kind: str, hook: Callable[..., Any] | None, names: Sequence[str]
) -> None:
    """A hook is called as ``hook(ctx, **arguments)``; check now that such a call binds."""
    if hook is None:
        return
    if not callable(hook) or inspect.iscoroutinefunction(hook):
        raise TypeError(f"tool {label!r}: {kind}= must be a sync callable, got {hook!r}")
    if len(set(names)) != len(names):
        raise TypeError(f"tool {label!r}: a parameter named 'result' clashes with {kind}'s")
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return  # e.g. a builtin: nothing to check against
    try:
        signature.bind(None, **dict.fromkeys(names))
    except TypeError as error:
        wanted = ", ".join(["ctx", *names])
        raise TypeError(
            f"tool {label!r}: {kind} hook {_label(hook)!r} must accept ({wanted}): {error}"
        ) from None

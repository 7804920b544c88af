"""Arithmetic for the ``calculate`` tool, without ``eval``.

τ² evaluates the expression as Python; parsing it with Python's own parser and walking the tree
gives the same results and the same error texts (syntax errors, division by zero, ...), while
refusing powers whose result would be too large to compute, which ``eval`` would try anyway.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, NoReturn

ALLOWED = frozenset("0123456789+-*/(). ")
_MAX_POWER_BITS = 100_000

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


class CalculationError(Exception):
    """The expression cannot be calculated; ``str(error)`` says why, in Python's words."""


def calculate(expression: str) -> str:
    """The value of ``expression`` rounded to two decimals, as text (e.g. ``'4.0'``)."""
    if not set(expression) <= ALLOWED:
        raise CalculationError("Invalid characters in expression")
    try:
        # eval() skips leading blanks before parsing; "<string>" is the name it reports.
        tree = ast.parse(expression.lstrip(" "), filename="<string>", mode="eval")
        return str(round(float(_value(tree.body)), 2))
    except (SyntaxError, ArithmeticError, TypeError, ValueError, RecursionError) as error:
        raise CalculationError(str(error)) from None


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Tuple):  # only "()" passes the character check
        return tuple(_value(element) for element in node.elts)
    if isinstance(node, ast.Call):
        _call(node)
    raise ValueError(f"unsupported expression: {ast.unparse(node)}")


def _call(node: ast.Call) -> NoReturn:
    """Fail like Python on e.g. "(2)(3)": the arguments are evaluated and checked first, then
    the number turns out not to be callable (nothing these characters can write is)."""
    callee = _value(node.func)
    for argument in node.args:
        if isinstance(argument, ast.Starred):
            unpacked = _value(argument.value)
            if not isinstance(unpacked, tuple):
                raise TypeError(f"{callee} argument after * must be an iterable, "
                                f"not {type(unpacked).__name__}")
        else:
            _value(argument)
    for keyword in node.keywords:  # only "**" can be written, and nothing here is a mapping
        unpacked = _value(keyword.value)
        raise TypeError(f"{callee} argument after ** must be a mapping, "
                        f"not {type(unpacked).__name__}")
    raise TypeError(f"{type(callee).__name__!r} object is not callable")


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse integer powers with more than ``_MAX_POWER_BITS`` bits (e.g. ``9**9**9``)."""
    if type(base) is int and type(exponent) is int and abs(base) > 1 and exponent > 0:
        bits = exponent * math.log2(abs(base))
        if bits > _MAX_POWER_BITS:
            raise ValueError("Expression too large to calculate")

"""``calculate`` and ``transfer_to_human_agents``, with τ²'s results and texts."""

from __future__ import annotations

from tool_adapters.sdk import ToolContext, ToolRetry, tool
from tool_adapters.tau2_common.calculator import CalculationError
from tool_adapters.tau2_common.calculator import calculate as evaluate


@tool(effect="safe")
def calculate(ctx: ToolContext, expression: str) -> str:
    """Work out an arithmetic expression and return the result rounded to two decimals.

    Args:
        expression: Numbers, + - * /, parentheses and spaces only, e.g. '(49.99 - 10) * 2'.
    """
    try:
        return evaluate(expression)
    except CalculationError as error:
        raise ToolRetry(str(error)) from None


@tool(effect="safe")
def transfer_to_human_agents(ctx: ToolContext, summary: str) -> str:
    """Hand the customer over to a human agent. Only do so when the customer asks for one, or
    when the policy and these tools cannot resolve their issue.

    Args:
        summary: A short account of the customer's issue, for the human agent.
    """
    return "Transfer successful"

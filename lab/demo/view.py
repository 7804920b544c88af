"""Rendering of the demo with rich: the live frame (transcript + call table) and the summary.

Kept apart from the timeline so the state can be tested and written to JSON without a terminal.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lab.demo.timeline import CallRow, Timeline, View

STATUS_STYLE = {
    "proposed": "dim", "running": "yellow", "held": "cyan", "staged": "magenta",
    "succeeded": "green", "committed": "bold green", "cancelled": "bold red",
    "failed": "red", "conflict": "bold red", "aborted": "bold red", "expired": "red",
}
EFFECT_STYLE = {"safe": "green", "reversible": "cyan", "sensitive": "magenta"}
WHO_STYLE = {"Ann": "bold", "2nd": "yellow"}
ENDING_STYLE = {"commit": "bold green", "cancel": "bold red"}


def arguments(values: dict[str, Any]) -> str:
    """Just the values, in the tool's order: short enough for an 80-column table."""
    return ", ".join(str(v) for v in values.values())


def statuses(row: CallRow) -> Text:
    """The streamed statuses after ``proposed`` (the "issued" column is that event's time)."""
    text = Text()
    shown = row.statuses[1:] if row.statuses[:1] == ["proposed"] else row.statuses
    for n, status in enumerate(shown):
        if n:
            text.append(" → ", style="dim")
        text.append(status, style=STATUS_STYLE.get(status, ""))
    if row.reason and row.final in {"cancelled", "failed", "conflict", "aborted"}:
        text.append(f" ({row.reason})", style="dim")
    return text


def transcript(view: View, speaking: bool) -> Panel:
    """What the user has said so far, per turn, and what the agent/other session saw."""
    lines = []
    for n, heard in enumerate(view.heard, 1):
        line = Text.assemble((f"turn {n}  ", "dim"), ("Ann: ", "bold"), heard.text)
        if heard.ending:
            line.append(f"   ⏎ {heard.ending}", style=ENDING_STYLE.get(heard.ending, ""))
        elif speaking and n == len(view.heard):
            line.append(" ▌", style="blink")
        lines.append(line)
    for at, who, note in view.notes:
        lines.append(Text.assemble((f"{at:6.2f}s  ", "dim"), (f"{who}: ", "bold yellow"), note))
    return Panel(Group(*lines), title=f"voice session  t = {view.elapsed:5.2f} s",
                 title_align="left", border_style="blue")


def calls_table(view: View) -> Table:
    """One row per call (an amend is a new row with the same client id), grouped by session
    and turn in the order the gateway recorded them, so interleaving stays visible."""
    table = Table(title="calls, as the gateway's event streams report them", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False)
    for name, justify in (("issued", "right"), ("who", "left"), ("#", "right"), ("tool", "left"),
                          ("effect", "left"), ("arguments", "left"), ("status", "left")):
        table.add_column(name, justify=justify,  # type: ignore[arg-type]
                         no_wrap=name not in {"arguments", "status"})
    previous = None
    for row in view.rows:
        if previous is not None and (row.who, row.turn) != previous:
            table.add_section()
        previous = (row.who, row.turn)
        table.add_row(f"{row.t:5.2f}s", Text(f"{row.who}/{row.turn}", style=WHO_STYLE[row.who]),
                      row.client_id, row.tool.split(".", 1)[-1],
                      Text(row.effect, style=EFFECT_STYLE.get(row.effect, "")),
                      arguments(row.arguments), statuses(row))
    return table


def live(timeline: Timeline, speaking: bool = True) -> RenderableType:
    """One frame, built from a consistent copy (the feeds keep writing meanwhile)."""
    view = timeline.view()
    return Group(transcript(view, speaking), calls_table(view))


def _money(cents: int) -> str:
    return f"{cents / 100:,.2f}"


def _order_lines(order: dict[str, Any] | None) -> list[Text]:
    if order is None:
        return [Text("order: not in the database", style="bold red")]
    lines = [Text.assemble(("order ", "bold"), (order["order_id"], "bold"),
                           f" for {order['customer']}: ",
                           (order["status"], STATUS_STYLE.get("committed", "")
                            if order["status"] == "placed" else "red"))]
    for item in order["items"]:
        lines.append(Text(f"  {item['quantity']} × {item['name']} ({item['sku']})  "
                          f"{_money(item['quantity'] * item['price_cents'])}"))
    payment = order["payment"]
    paid = (f", charged {_money(payment['amount_cents'])} to the card ending "
            f"{payment['card_last4']}" if payment else ", not paid")
    lines.append(Text(f"  total {_money(order['total_cents'])}{paid}"))
    return lines


def _signed(n: int) -> str:
    return "±0" if n == 0 else f"{n:+d}".replace("-", "−")


def _calls_line(report: dict[str, Any]) -> Text:
    counts = report["summary"]
    reasons = ", ".join(f"{n} {why}" for why, n in counts["cancel_reasons"].items())
    return Text.assemble(
        ("calls ", "bold"), f"Ann's agent issued {counts['issued']}: ",
        (f"{counts['kept']} kept", "bold green"), ", ",
        (f"{counts['cancelled']} cancelled", "bold red"), f" ({reasons})" if reasons else "")


def _isolation_lines(report: dict[str, Any]) -> list[Text]:
    lines = []
    for peek in report["isolation"]:
        error = peek["error"] or {}
        seen = (Text(f"saw it {peek['order_status']}", style="green") if peek["found"] else
                Text(f"got {error.get('code')}: {error.get('message')} — it does not exist "
                     "outside the turn", style="yellow"))
        lines.append(Text.assemble(("isolation ", "bold"), f"{peek['when']}, a 2nd app asking "
                                   f"for {peek['order_id']} ", seen))
    return lines


def _stock_line(report: dict[str, Any]) -> Text:
    stock = report["stock"]
    parts = [f"{sku} {stock['before'][sku]}→{n} ({_signed(n - stock['before'][sku])})"
             for sku, n in stock["after"].items()]
    line = Text.assemble(("stock ", "bold"), ", ".join(parts))
    if report["new_orders"] != [report["order_id"]]:
        line.append(f"; new orders: {report['new_orders']}", style="bold red")
    return line


def _sequential_line(report: dict[str, Any]) -> Text:
    if report["sequential"]["same"]:
        return Text.assemble(("✓ ", "bold green"), "a sequential run would have produced the "
                             "same order", (" (the kept calls re-run one by one through the tool "
                                            "functions on a fresh copy of the shop give "
                                            "identical rows)", "dim"))
    return Text.assemble(("✗ ", "bold red"), "a sequential run would NOT have produced the same "
                         f"shop: {', '.join(report['sequential']['differs'])} differ")


def _abandoned_lines(report: dict[str, Any]) -> list[Text]:
    """What a cancelled turn left behind, read from the database (new orders, kettle stock)."""
    kettle = (report["stock"]["before"].get("kettle"), report["stock"]["after"].get("kettle"))
    others = [o for o in report["new_orders"] if o != report["order_id"]]
    return [Text.assemble(("abandoned turn ", "bold"), (str(turn["status"]), "bold red"),
                          f": new orders besides {report['order_id']}: {others or 'none'}, "
                          f"kettle stock {kettle[0]}→{kettle[1]}")
            for turn in report["turns"] if turn["ending"] == "cancel"]


def summary(report: dict[str, Any]) -> Panel:
    """The end screen: what was issued/kept/cancelled, what the database holds, and checks."""
    lines: list[Text] = [_calls_line(report), *_order_lines(report["order"]),
                         *_isolation_lines(report), _stock_line(report)]
    lines.extend(_abandoned_lines(report))
    if report["restocked"]:
        lines.append(Text(f"(restocked before the run: {', '.join(report['restocked'])})",
                          style="dim"))
    lines.append(_sequential_line(report))
    return Panel(Group(*lines), title=f"summary  ({report['elapsed_s']:.1f} s in all)",
                 title_align="left", border_style="green" if report["sequential"]["same"]
                 else "red")

"""Correction streams: the user first says a wrong value for one argument of a write, and
corrects it a few words later ("…, sorry, I meant #W2378156, …").

**Which argument.** The first write of the task (τ²'s order) with an argument the user says;
within it the argument a caller most plausibly gets wrong (the conformance replay's choice,
``lab.conformance.speculation.WRONG_ARGUMENT``), then the record id, then the others. A
task whose writes take no spoken value (item ids, payment ids come from results) gets the
correction on a spoken argument of a read that a write needs (the user's email, name or zip,
an order id): the wrong value then travels through that read's result; failing that, on a
spoken argument of any other call. A task without writes gets none.

**Which wrong value.** A plausible other value from τ²'s seed, as the conformance replay picks
them: another order or reservation of the same customer, another user, another street,
another payment method of the customer, another first name; else another value of the same
field in the seed; else the value with its last digit misheard. It must not contain or be
contained in the right value, must not be said elsewhere and must not be any gold value (the
oracle would take it for a right one).

**Where.** The right value's first mention is replaced by the wrong one, and "sorry, I meant
<right>," follows four words later (or before the right value's next mention, if sooner), so
the right value is heard for the first time in the correction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from agent_worker.backends.oracle import Correction, literals, mention_at, mentions
from agent_worker.placeholders import strings
from lab.tau2bench.gold import GoldStep, gold_values

AFTER_WORDS = 4
PHRASE = "sorry, I meant"
_SEED_OPTIONS = 40  # other values of the same field tried at most


@dataclass(frozen=True)
class Injected:
    text: str
    correction: Correction
    call: int  # gold id whose argument is said wrong first
    argument: str
    kind: str  # "write", "read a write needs" or "read"


def inject(domain: str, text: str, steps: Sequence[GoldStep]) -> Injected | str:
    """The utterance with a wrong value and its correction, or why there is none."""
    writes = [n for n, s in enumerate(steps, 1) if s.effect != "safe"]
    if not writes:
        return "no write"
    taken = set(gold_values(steps))
    needed = _needed_reads(steps, writes)
    for number, name, value in _candidates(domain, text, steps, [*writes, *needed]):
        step = steps[number - 1]
        wrong = wrong_value(domain, name, value, step.arguments, text, taken)
        if wrong is not None:
            kind = ("write" if number in writes else
                    "read a write needs" if number in needed else "read")
            return Injected(with_correction(text, value, wrong), Correction(wrong, value),
                            number, name, kind)
    return "no spoken argument of any call"


def _candidates(domain: str, text: str, steps: Sequence[GoldStep], first: list[int],
                ) -> Iterator[tuple[int, str, str]]:
    """(gold id, argument, spoken value): of the calls ``first``, then of the others."""
    for number in dict.fromkeys([*first, *range(1, len(steps) + 1)]):
        step = steps[number - 1]
        for name in _argument_order(domain, step.name, step.arguments):
            # strings only: a spoken number stays a number, it is not corrected
            for value in strings(step.arguments[name]):
                if mentions(text, value):
                    yield number, name, value


def _needed_reads(steps: Sequence[GoldStep], writes: list[int]) -> list[int]:
    """Reads whose results show a value of a write (directly or through other reads), in
    τ²'s order."""
    needed: set[int] = set()
    todo = list(writes)
    while todo:
        number = todo.pop()
        for value in literals(steps[number - 1].arguments):
            for earlier, read in enumerate(steps[:number - 1], 1):
                if read.effect == "safe" and read.ok and mentions(read.shown, value):
                    if earlier not in needed:
                        needed.add(earlier)
                        todo.append(earlier)
                    break
    return sorted(needed)


def _argument_order(domain: str, tool: str, arguments: dict[str, Any]) -> list[str]:
    from lab.conformance.speculation import WRONG_ARGUMENT, seed_index

    preferred = WRONG_ARGUMENT.get(domain, {}).get(tool)
    record = seed_index(domain).record_key
    return list(dict.fromkeys(n for n in (preferred, record, *arguments) if n in arguments))


def wrong_value(domain: str, name: str, right: str, arguments: dict[str, Any], text: str,
                taken: set[str]) -> str | None:
    """A plausible wrong value for argument ``name`` (see the module docstring)."""
    for option in _options(domain, name, right, arguments):
        if (isinstance(option, str) and option and option != right
                and not mentions(option, right) and not mentions(right, option)
                and not mentions(text, option) and option not in taken
                and "<" not in option and ">" not in option):
            return option
    return None


def _options(domain: str, name: str, right: str, arguments: dict[str, Any]) -> Iterator[Any]:
    from lab.conformance.speculation import seed_index

    index = seed_index(domain)
    special = {index.record_key: lambda: index.other_record(right),
               index.payment_key: lambda: index.other_payment(arguments, right),
               "user_id": lambda: index.other_user(right),
               "address1": lambda: index.other_street(right),
               "first_name": lambda: index.other_first_name(right)}
    if name in special:
        yield special[name]()
    yield from _seed_values(domain, name)[:_SEED_OPTIONS]
    yield _misheard_digit(right)


@cache
def _seed_values(domain: str, field: str) -> tuple[str, ...]:
    """Every string value of ``field`` in τ²'s seed, in the seed's order, without repeats."""
    from lab.conformance import reference

    found: dict[str, None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == field and isinstance(value, str):
                    found.setdefault(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(reference.seed_data(domain))
    return tuple(found)


def _misheard_digit(value: str) -> str | None:
    digits = [i for i, c in enumerate(value) if c.isdigit()]
    if not digits:
        return None
    i = digits[-1]
    return value[:i] + str((int(value[i]) + 1) % 10) + value[i + 1:]


def with_correction(text: str, right: str, wrong: str) -> str:
    """``text`` with the first mention of ``right`` said as ``wrong``, corrected
    ``AFTER_WORDS`` words later (or before the next mention of ``right``, if sooner)."""
    at = mention_at(text, right)
    assert at >= 0, f"{right!r} is not said"
    spoken = text[:at] + wrong + text[at + len(right):]
    end = at + len(wrong)
    words = list(re.finditer(r"\S+", spoken[end:]))
    count = AFTER_WORDS + (1 if spoken[end:end + 1].strip() else 0)  # the wrong word's tail
    cut = end + words[count - 1].end() if len(words) >= count else len(spoken)
    again = mention_at(spoken, right, end)
    if 0 <= again < cut:
        cut = spoken.rfind(" ", end, again)
        cut = end if cut < 0 else cut
    said = f"{spoken[:cut]} {PHRASE} {right},{spoken[cut:]}"
    return " ".join(said.split())

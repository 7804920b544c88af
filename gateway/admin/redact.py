"""Secrets out of what the dashboard shows: call arguments, results and session metadata.

A value is hidden when its key names a secret (``password``, ``api_key``, ``token``, …, matched
on the words of the key, so ``card_last4`` stays and ``card_number`` goes) or when the value
itself looks like a credential (a bearer token, one of our API keys or confirm tokens, a long
payment card number). The ledger keeps the real values; only the view is redacted.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "•••"
_SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "secret", "token", "cvv", "cvc", "pin", "ssn",
    "authorization", "auth", "credential", "credentials", "private", "otp", "cookie",
})
_SECRET_NAMES = frozenset({
    "apikey", "accesskey", "secretkey", "privatekey", "cardnumber", "iban", "accountnumber",
    "clientsecret", "sessionkey",
})
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SECRET_VALUE = re.compile(
    r"^(?:bearer\s+\S+|sgk_\S+|sgc_\S+|sk-[A-Za-z0-9_-]{16,}|(?:\d[ -]?){13,19})$",
    re.IGNORECASE)


def secret_key(name: str) -> bool:
    words = [w.lower() for w in _WORD.findall(name)]
    return bool(_SECRET_WORDS.intersection(words)) or "".join(words) in _SECRET_NAMES


def redact(value: Any, *, depth: int = 0) -> Any:
    """A copy of ``value`` with secrets replaced by ``MASK`` (dicts and lists, recursively)."""
    if depth > 32:
        return MASK
    if isinstance(value, dict):
        return {k: MASK if secret_key(str(k)) else redact(v, depth=depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, depth=depth + 1) for v in value]
    if isinstance(value, str) and _SECRET_VALUE.match(value.strip()):
        return MASK
    return value

"""The SMTP side: settings, building messages, and telling refusals from outages.

A refusal (a 5xx reply) will not change on retry, so it is reported; anything else — no
connection, a dropped connection, a 4xx "try later" — is worth trying again. smtplib's errors
all derive from ``OSError``, which is what lets transient ones travel up as plain exceptions.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import re
import smtplib
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

KEY_HEADER = "X-Specgate-Idempotency-Key"

# Addresses as a voice agent should produce them: plain ASCII local@domain, no display name.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
# What may stand left of the "@" in a Message-ID without quoting (RFC 5322 dot-atom-text).
_MSG_ID_LEFT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


@dataclass(frozen=True, slots=True)
class MailSettings:
    """The adapter's settings (``adapter_settings["mail"]``), checked once per use."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    sender: str = "specgate@localhost"
    smtp_timeout_s: float = 10.0

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> MailSettings:
        """Read the known keys, falling back to defaults; raises ``ValueError`` on bad values.

        Numbers may arrive as strings (environment variables), so they are converted.
        """
        defaults = cls()
        host = settings.get("smtp_host", defaults.smtp_host)
        sender = settings.get("sender", defaults.sender)
        try:
            port = int(settings.get("smtp_port", defaults.smtp_port))
            timeout = float(settings.get("smtp_timeout_s", defaults.smtp_timeout_s))
        except (TypeError, ValueError) as error:
            raise ValueError(f"mail adapter: bad smtp_port or smtp_timeout_s: {error}") from None
        if not isinstance(host, str) or not host:
            raise ValueError(f"mail adapter: smtp_host must be a host name, got {host!r}")
        if not 0 < port < 65536:
            raise ValueError(f"mail adapter: smtp_port must be 1-65535, got {port}")
        if not isinstance(sender, str) or not is_address(sender):
            raise ValueError(f"mail adapter: sender must be an address, got {sender!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"mail adapter: smtp_timeout_s must be positive, got {timeout}")
        return cls(smtp_host=host, smtp_port=port, sender=sender, smtp_timeout_s=timeout)


def is_address(value: str) -> bool:
    """Whether ``value`` is a bare ``local@domain`` address that fits in an SMTP path."""
    return len(value) <= 254 and _ADDRESS.fullmatch(value) is not None


def message_id(key: str) -> str:
    """``<key@specgate>``: the same key always gives the same id, which is what lets a
    receiver drop a resent copy. A key that is not a valid id part is replaced by its hash."""
    if len(key) > 128 or _MSG_ID_LEFT.fullmatch(key) is None:
        key = "k" + hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"<{key}@specgate>"


def build_message(settings: MailSettings, key: str, to: str, subject: str,
                  body: str) -> EmailMessage:
    """One plain-text message, tagged with ``key`` in its Message-ID and in ``KEY_HEADER``."""
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = message_id(key)
    message[KEY_HEADER] = key
    message.set_content(body)
    return message


def connect(settings: MailSettings) -> smtplib.SMTP:
    """An open SMTP session; use it as a context manager so it ends with QUIT.

    The HELO name is the plain host name: smtplib's default looks up the FQDN, which can
    stall for seconds on hosts with slow DNS.
    """
    return smtplib.SMTP(settings.smtp_host, settings.smtp_port,
                        local_hostname=socket.gethostname() or "localhost",
                        timeout=settings.smtp_timeout_s)


def send(settings: MailSettings, message: EmailMessage) -> None:
    """Submit one message in its own SMTP session. Raises smtplib's errors (``OSError``)."""
    with connect(settings) as client:
        client.send_message(message)


def _reply(code: int, text: bytes | str) -> str:
    decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {decoded}".strip()


def server_answered(error: OSError) -> bool:
    """Whether the error is the server's verdict on this one message (its recipient or its
    content), so the session still works and the next message may fare better. A refused
    sender is not: it is the configuration, and every other message would be refused too."""
    if isinstance(error, smtplib.SMTPSenderRefused):
        return False
    return isinstance(error, smtplib.SMTPRecipientsRefused | smtplib.SMTPResponseException)


def permanent_refusal(error: OSError) -> str | None:
    """The server's reply if it refused the message for good (5xx), else ``None``."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = list(error.recipients.values())
        if replies and all(code >= 500 for code, _ in replies):
            return "; ".join(_reply(code, text) for code, text in replies)
        return None
    if isinstance(error, smtplib.SMTPResponseException):
        return _reply(error.smtp_code, error.smtp_error) if error.smtp_code >= 500 else None
    if isinstance(error, smtplib.SMTPNotSupportedError):  # e.g. no SMTPUTF8 on the server
        return str(error)
    return None

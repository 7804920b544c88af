"""One typed settings object for every specgate process.

All settings come from the environment with the ``SPECGATE_`` prefix (or a ``.env`` file).
Leaving ``SPECGATE_DATABASE_URL`` empty selects the embedded default: a private Postgres that
the program starts itself under ``SPECGATE_HOME``. Settings are validated once at start-up and
fail fast with a message that names the offending variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPECGATE_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path(".specgate"),
        description="Runtime data of the embedded default (Postgres cluster, broker files).",
    )
    database_url: str | None = Field(
        default=None,
        description="Ledger database (SQLAlchemy URL). Empty: embedded Postgres under `home`.",
    )
    tool_database_urls: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Per-adapter tool databases, e.g. {\"demo\": \"postgresql+psycopg://…/shop\"}. "
            "An adapter not listed writes to the ledger database (one local transaction at "
            "commit); a listed one on another database commits by two-phase commit."
        ),
    )
    adapter_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Settings and secrets per adapter, handed to its tools as ctx.settings.",
    )
    broker_url: str | None = Field(default=None, description="Celery broker; empty: embedded.")
    adapters: list[str] = Field(
        default_factory=lambda: ["demo"],
        description="Adapters to load, by package name under tool_adapters/ (explicit list).",
    )

    turn_ttl_s: float = Field(default=300.0, gt=0, description="An open turn expires after this.")
    turn_idle_s: float = Field(
        default=30.0, gt=0, description="An open turn holding a transaction with no request "
        "for this long is cancelled, and its connection and row locks released.")
    staged_ttl_s: float = Field(default=600.0, gt=0, description="TTL of a staged call.")
    max_held_transactions: int = Field(
        default=32, ge=1, description="Bound on turn transactions held open at once per gateway."
    )
    lock_timeout_ms: int = Field(default=2000, ge=1, description="lock_timeout on held turns.")
    reaper_period_s: float = Field(default=5.0, gt=0, description="Reconciler/reaper period.")
    owner_lease_s: float = Field(default=15.0, gt=0, description="Session owner lease length.")
    session_idle_s: float = Field(
        default=120.0, gt=0, description="A session with no request for this long, and no turn "
        "holding a transaction, is let go by its gateway, so new and rebalanced gateways get "
        "work (its next request is served by whichever gateway it reaches).")
    drain_grace_s: float = Field(
        default=20.0, ge=0, description="On SIGTERM, how long specgate serve lets open turns "
        "finish before it cancels them, lets its sessions go and exits.")
    owner_recheck_s: float = Field(
        default=1.0, gt=0, description="How long a gateway trusts that it still owns a session "
        "before it claims it again in the ledger (one statement per session at most this often).")
    advertise_url: str | None = Field(
        default=None, description="Base URL at which other gateways reach this one, to forward "
        "requests for the sessions it owns; default: http://<host>:<port> of specgate serve "
        "(the machine's name when it listens on every interface).")
    forward_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest wait for the owner's answer to a forwarded "
        "request (a ?wait= call waits at most wait_max_s).")
    max_calls_per_turn: int = Field(
        default=1000, ge=1, description="Calls one turn may issue (amendments included); past "
        "it, 409 turn_full.")
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted; a larger one is "
        "refused with 413 body_too_large (session metadata and call arguments included).")
    key_cache_s: float = Field(default=30.0, ge=0, description="API key lookup cache lifetime.")
    wait_max_s: float = Field(default=30.0, gt=0, description="Largest accepted ?wait=.")
    request_threads: int = Field(
        default=40, ge=1, description="Threads that run the gateway's blocking request work "
        "(database, tools). A request that waits (?wait=, a row lock) holds one while it "
        "waits; fewer threads cost less CPU per call when many sessions are busy.")
    gid_prefix: str = Field(default="sg", pattern=r"^[a-z][a-z0-9]{0,15}$")

    # The tool worker (runner ``task``): retries, the outbox relay, and waiting for its calls.
    worker_concurrency: int = Field(default=4, ge=1, description="Tasks run at once per worker.")
    task_max_attempts: int = Field(
        default=5, ge=1, description="Tries of a task (or compensation) that fails transiently.")
    task_retry_base_s: float = Field(
        default=0.5, gt=0, description="First retry delay; doubles with every attempt.")
    relay_period_s: float = Field(default=0.5, gt=0, description="Outbox relay pass period.")
    relay_grace_s: float = Field(
        default=2.0, gt=0, description="An unfinished outbox row nobody works on is sent again "
        "after this, then after doubling delays.")
    relay_max_backoff_s: float = Field(default=30.0, gt=0, description="Cap of those delays.")
    approval_ttl_s: float = Field(
        default=600.0, gt=0, description="A call awaiting approval (and its confirmation "
        "token) expires this long after it was staged; the reaper then denies it.")
    approval_policy: dict[str, list[str]] = Field(
        default_factory=dict, description="Per tenant (\"*\": every tenant), tools or effect "
        "classes that need approval beyond the tools' own flag, e.g. "
        "{\"acme\": [\"mail.send_email\", \"class:sensitive\"]}.")
    settle_wait_s: float = Field(
        default=10.0, ge=0, description="How long a commit waits for its task calls to finish.")

    @field_validator("database_url", "broker_url", "advertise_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("postgresql"):
            raise ValueError(f"SPECGATE_DATABASE_URL must be a postgresql URL, got {value!r}")
        return value

    @field_validator("advertise_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"SPECGATE_ADVERTISE_URL must be an http(s) URL, got {value!r}")
        return None if value is None else value.rstrip("/")

    @model_validator(mode="after")
    def _known_tool_databases(self) -> Settings:
        unknown = set(self.tool_database_urls) - set(self.adapters)
        if unknown:
            raise ValueError(
                f"SPECGATE_TOOL_DATABASE_URLS names adapters that are not loaded: {sorted(unknown)}"
            )
        return self

    @property
    def embedded(self) -> bool:
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()

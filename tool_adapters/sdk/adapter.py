"""An adapter: a named group of tools for one backend, plus the tables and seed data it owns.

Each adapter package under ``tool_adapters/`` exports one ``ADAPTER``; the gateway loads only the
adapters listed in its settings and addresses tools as ``adapter.tool``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, MetaData
from sqlalchemy.orm import Session

from tool_adapters.sdk.spec import NAME_PATTERN, ToolSpec


@dataclass(frozen=True, slots=True)
class Adapter:
    """A frozen bundle of tools; names are checked when the adapter module is imported.

    ``metadata`` holds the adapter's own tables (created by the gateway's migrate command) and
    ``seed`` fills them with demo or reference data on a connection inside a transaction.
    ``periodic`` are housekeeping jobs the tool worker runs about once a second (e.g. sending
    mail that was scheduled for now), each called as ``job(session, settings)`` with a session
    on the adapter's database that is committed when the job returns, and the adapter's
    settings. A job must be safe to run concurrently in several workers (lock what it takes).
    """

    name: str
    tools: tuple[ToolSpec, ...]
    metadata: MetaData | None = None
    seed: Callable[[Connection], None] | None = None
    description: str = ""
    periodic: tuple[Callable[[Session, Mapping[str, Any]], object], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"adapter name {self.name!r} must match {NAME_PATTERN.pattern!r}")
        object.__setattr__(self, "tools", tuple(self.tools))  # a list is accepted, kept frozen
        object.__setattr__(self, "periodic", tuple(self.periodic))
        for job in self.periodic:
            if not callable(job):
                raise TypeError(f"adapter {self.name!r}: periodic job {job!r} is not callable")
        for spec in self.tools:
            if not isinstance(spec, ToolSpec):
                raise TypeError(f"adapter {self.name!r}: {spec!r} is not a @tool ToolSpec")
        names = [spec.name for spec in self.tools]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"adapter {self.name!r}: duplicate tool names {duplicates}")
        if self.metadata is not None and not isinstance(self.metadata, MetaData):
            raise TypeError(f"adapter {self.name!r}: metadata must be a sqlalchemy MetaData")
        if self.seed is not None and not callable(self.seed):
            raise TypeError(f"adapter {self.name!r}: seed must be callable")

    def tool(self, name: str) -> ToolSpec:
        """The tool called ``name`` (unqualified); ``KeyError`` lists the ones that exist."""
        for spec in self.tools:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self.tools) or "none"
        raise KeyError(f"adapter {self.name!r} has no tool {name!r} (it has: {known})")

    @property
    def qualified_names(self) -> list[str]:
        """``adapter.tool`` for each tool, as the gateway and the model address them."""
        return [f"{self.name}.{spec.name}" for spec in self.tools]

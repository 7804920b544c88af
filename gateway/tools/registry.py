"""The tool registry: adapters are listed explicitly in settings, never discovered.

A tool's effect class and runner come from its adapter's code on the server; nothing the caller
sends can change them. An unknown name is refused before anything runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.errors import InvalidArguments
from tool_adapters.sdk import Adapter, ToolSpec


@dataclass(frozen=True, slots=True)
class RegisteredTool:
    adapter: Adapter
    spec: ToolSpec

    @property
    def name(self) -> str:
        return f"{self.adapter.name}.{self.spec.name}"

    def describe(self) -> dict[str, object]:
        schema = self.spec.public_schema()
        schema["name"] = self.name
        return schema


class Registry:
    def __init__(self, adapters: Iterable[Adapter]) -> None:
        self.adapters = {adapter.name: adapter for adapter in adapters}
        self._tools = {
            f"{adapter.name}.{spec.name}": RegisteredTool(adapter, spec)
            for adapter in self.adapters.values()
            for spec in adapter.tools
        }

    def get(self, name: str) -> RegisteredTool:
        tool = self._tools.get(name)
        if tool is None:
            raise InvalidArguments(f"unknown tool {name!r}", code="unknown_tool")
        return tool

    def __iter__(self) -> Iterator[RegisteredTool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def load_adapter(name: str) -> Adapter:
    """Import ``tool_adapters.<name>`` and return its ``ADAPTER``."""
    module = importlib.import_module(f"tool_adapters.{name}")
    adapter = getattr(module, "ADAPTER", None)
    if not isinstance(adapter, Adapter):
        raise RuntimeError(f"tool_adapters.{name} has no ADAPTER of type Adapter")
    return adapter


def load_registry(names: Iterable[str]) -> Registry:
    return Registry(load_adapter(name) for name in names)

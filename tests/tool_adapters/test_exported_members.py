"""The SDK's public surface is pinned: adding or dropping a name must be a deliberate change."""

import types

from tool_adapters import sdk

EXPECTED = [
    "Adapter",
    "Effect",
    "Runner",
    "ToolContext",
    "ToolError",
    "ToolFailed",
    "ToolRetry",
    "ToolSpec",
    "tool",
]


def test_all_is_pinned() -> None:
    assert sdk.__all__ == EXPECTED


def test_every_exported_name_is_defined() -> None:
    for name in sdk.__all__:
        assert hasattr(sdk, name), name


def test_every_public_member_is_exported() -> None:
    public = {
        name
        for name, value in vars(sdk).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(sdk.__all__)

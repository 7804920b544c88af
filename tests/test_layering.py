"""Who may import whom, pinned like the SDK's ``__all__``: a new arrow that breaks the layering
fails here, naming the file and the import.

    specgate (the command)  ->  anything
    lab                     ->  gateway, agent_worker, tool_adapters
    gateway                 ->  tool_adapters (the SDK and, by name, the adapters it loads)
    agent_worker            ->  nothing of ours (it talks to a gateway over HTTP)
    tool_adapters.sdk       ->  nothing of ours
    tool_adapters.<name>    ->  tool_adapters.sdk, tool_adapters.tau2_common

Imports inside functions count too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("specgate", "gateway", "agent_worker", "tool_adapters", "lab", "migrations", "tests")

# package (or module prefix) -> the top-level packages of ours it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "gateway": ("specgate", "lab", "agent_worker", "tests"),
    "agent_worker": ("specgate", "gateway", "lab", "tool_adapters", "tests"),
    "tool_adapters": ("specgate", "gateway", "lab", "agent_worker", "tests"),
    "tool_adapters.sdk": ("specgate", "gateway", "lab", "agent_worker", "tool_adapters",
                          "tests"),
    "lab": ("specgate", "tests"),
}
SDK_MAY_IMPORT = ("tool_adapters.sdk",)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from … import`` in the file names (relative ones
    resolved against the file's package)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return sorted(found)


def violations(package: str, root: Path = ROOT) -> list[str]:
    banned = FORBIDDEN[package]
    folder = root.joinpath(*package.split("."))
    problems = []
    for path in sorted(folder.rglob("*.py")):
        for line, module in imports_of(path, root):
            top = module.split(".")[0]
            if top not in banned:
                continue
            if package == "tool_adapters.sdk" and module.startswith(SDK_MAY_IMPORT):
                continue
            if package == "tool_adapters" and top == "tool_adapters":
                continue
            problems.append(f"{path.relative_to(root)}:{line} imports {module}")
    return problems


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    assert violations(package) == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The check itself can fail: a function-level import and a relative one are both found."""
    (tmp_path / "gateway" / "turns").mkdir(parents=True)
    (tmp_path / "gateway" / "turns" / "probe.py").write_text(
        "def f():\n    from lab import servers\n\nfrom ...lab import bench\nimport gateway.db\n")
    assert violations("gateway", tmp_path) == [
        "gateway/turns/probe.py:2 imports lab",
        "gateway/turns/probe.py:4 imports lab",
    ]


def test_every_top_level_package_is_placed() -> None:
    """A new top-level package must be given a place in the layering above."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(OURS), packages - set(OURS)

"""Who may import whom, pinned like the SDK's ``__all__``: a new arrow that breaks the layering
fails here, naming the file and the import.

    specgate (the command)  ->  anything
    lab                     ->  gateway, agent_worker, tool_adapters
    gateway                 ->  tool_adapters (the SDK and, by name, the adapters it loads)
    agent_worker            ->  nothing of ours (it talks to a gateway over HTTP)
    tool_adapters.sdk       ->  nothing of ours
    tool_adapters.<name>    ->  tool_adapters.sdk, tool_adapters.tau2_common

Imports inside functions count too: a lazy import is still an arrow. Inside the gateway the
modules form no import cycle (a ``TYPE_CHECKING`` import names a type and runs nothing, so it
does not count there), and ``gateway/runtime.py``, which every domain uses, imports none of
them.
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


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return guarded


def imports_of(path: Path, root: Path, *, typing: bool = True) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from … import`` in the file names (relative ones
    resolved against the file's package); without ``typing``, not those under
    ``TYPE_CHECKING``. A ``from package import name`` also names ``package.name``, which
    counts when it is a module."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(root).parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if typing else _type_checking_nodes(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names
                      if (root / Path(*f"{module}.{alias.name}".split("."))).with_suffix(
                          ".py").exists()]
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


def module_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Run-time imports between the modules of ``package`` (``a.b`` → ``a.c``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.joinpath(package).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        targets = {module for _, module in imports_of(path, root, typing=False)
                   if module.split(".")[0] == package}
        graph[name] = {t for t in targets if t != name and (
            root.joinpath(*t.split(".")).with_suffix(".py").exists())}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_gateway_modules_form_no_import_cycle() -> None:
    assert cycles(module_graph("gateway")) == []


def test_the_cycle_check_finds_a_lazy_cycle(tmp_path: Path) -> None:
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "a.py").write_text("import gateway.b\n")
    (tmp_path / "gateway" / "b.py").write_text("def f():\n    from gateway import a\n")
    (tmp_path / "gateway" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway import a\n")
    assert cycles(module_graph("gateway", tmp_path)) == [["gateway.a", "gateway.b"]]


def test_the_runtime_imports_no_domain_module() -> None:
    """``gateway.runtime`` holds the per-process state every domain uses: plumbing only."""
    plumbing = {"gateway.config", "gateway.db", "gateway.errors", "gateway.presence"}
    imported = {module for _, module in imports_of(ROOT / "gateway" / "runtime.py", ROOT,
                                                   typing=False)
                if module.startswith("gateway")}
    assert imported <= plumbing, imported - plumbing

"""The package's floors, read from its source: what may import what (``nnunet_efficient/__init__.py``).

Static: every ``import`` statement counts, at module level, inside functions (lazy imports) and
under ``TYPE_CHECKING`` alike, since each is a tie between two modules. Importing the modules
instead would cost seconds of torch import per check.

Run as a script (``python tests/test_layers.py``) it prints the drawing: each package's floor and
the packages it imports.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnunet_efficient"

#: Each top-level package (or module) of nnunet_efficient and its floor: a package imports only
#: packages on lower floors, or on its own floor without a circle.
FLOORS = {
    "errors": 0, "common": 0,
    "networks": 1, "sampling": 1, "patch_performance": 1,
    "dataset_checks": 2, "planners": 2,
    "inference": 3,
    "export": 4, "training": 4,
    "trainers": 5,
    "benchmark": 6,
    "cli": 7,
}
#: The pure-PyTorch core: these never import nnunetv2, not even lazily.
CORE = ("errors", "common", "networks", "sampling", "patch_performance")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every module ``name`` imports (absolute names; ``from a import b`` gives ``a.b`` where that is a module)."""
    path = MODULES[name]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES)
    return frozenset(found)


def plugin_imports_of(name: str) -> set[str]:
    out = set()
    for imported in imports_of(name):
        while imported not in MODULES and "." in imported:
            imported = imported.rsplit(".", 1)[0]
        if imported in MODULES and imported != name and imported != "nnunet_efficient":
            out.add(imported)
    return out


def package_of(name: str) -> str:
    return name.split(".")[1]


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in FLOORS}
    for name in MODULES:
        if name == "nnunet_efficient":
            continue
        for imported in plugin_imports_of(name):
            if package_of(imported) != package_of(name):
                graph[package_of(name)].add(package_of(imported))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_floor():
    packages = {package_of(name) for name in MODULES if name != "nnunet_efficient"}
    assert packages == set(FLOORS), f"give a floor to {packages - set(FLOORS)} (and document it in __init__.py)"


def test_no_arrow_runs_up_a_floor():
    upward = [f"{a} (floor {FLOORS[a]}) -> {b} (floor {FLOORS[b]})"
              for a, targets in package_graph().items() for b in targets if FLOORS[b] > FLOORS[a]]
    assert not upward


def test_packages_import_each_other_in_no_circle():
    assert circles(package_graph()) == []


def test_modules_import_each_other_in_no_circle():
    graph = {name: plugin_imports_of(name) for name in MODULES}
    assert circles(graph) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "nnunet_efficient" and package_of(n) in CORE))
def test_core_module_never_imports_nnunetv2(name):
    """Following the plugin's own imports from ``name``: no module on the way imports nnunetv2."""
    pending, seen = [name], set()
    while pending:
        current = pending.pop()
        seen.add(current)
        for imported in imports_of(current):
            assert imported.split(".")[0] != "nnunetv2", f"{current} imports {imported}"
        pending += [m for m in plugin_imports_of(current) if m not in seen]


def test_the_layer_checks_see_what_they_check():
    # the walker resolves relative and lazy imports: a check over an empty graph would pass for nothing
    assert "nnunet_efficient.common.files" in plugin_imports_of("nnunet_efficient.benchmark.report")
    assert "nnunet_efficient.inference.strategies.base" in plugin_imports_of("nnunet_efficient.inference.strategies")
    assert "nnunetv2.utilities.find_objects" in imports_of("nnunet_efficient.training.derived")  # a lazy import
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    graph = package_graph()
    for package in sorted(graph, key=lambda p: (FLOORS[p], p)):
        print(f"floor {FLOORS[package]}  {package:<18} -> {', '.join(sorted(graph[package], key=FLOORS.get)) or '-'}")
    print("circles:", circles(graph) or "none", "| module circles:",
          circles({n: plugin_imports_of(n) for n in MODULES}) or "none")

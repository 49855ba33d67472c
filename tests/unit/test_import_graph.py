"""The import graph of the four layers, read from the source (ast, nothing imported).

Layers, lowest first: ``shared`` (the pipeline library), ``toolkit`` (offline toolkits),
``services`` (the stages and the farm), ``app`` (command line, demo, supervisor, launcher).
A module imports only its own layer and those below; no service imports another.

Every ``import`` counts, at module level or inside a function (a lazy import still
ties the two modules together), except those under ``if TYPE_CHECKING:``. Importing
``a.b.c`` from outside package ``a.b`` also runs ``a/b/__init__.py``, so it counts as
importing ``a.b`` too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "toolkit", "services", "app")  # lowest layer first


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join(parts)] = (path, is_package)
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return hidden


def _imported_names(module: str, is_package: bool, tree: ast.Module, known: set[str]) -> Iterator[str]:
    hidden = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the project modules it imports (directly, and the packages that run on the way)."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = set()
        for name in _imported_names(module, is_package, ast.parse(path.read_text(encoding="utf-8")), known):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if not name or name == module or module.startswith(name + "."):
                continue
            edges.add(name)
            parts = name.split(".")
            for i in range(1, len(parts)):
                package = ".".join(parts[:i])
                if package in known and not module.startswith(package + "."):
                    edges.add(package)
        graph[module] = frozenset(edges - {module})
    return graph


def import_cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def reachable(graph: dict[str, frozenset[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for child in graph[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_the_cycle_finder_finds_a_cycle_through_a_package() -> None:
    graph = {
        "a": frozenset({"a.x"}),
        "a.x": frozenset({"b.y", "b"}),
        "b": frozenset(),
        "b.y": frozenset({"a", "c"}),
        "c": frozenset(),
    }
    assert import_cycles(graph) == [["a", "a.x", "b.y"]]
    assert import_cycles({**graph, "b.y": frozenset({"c"})}) == []


def test_no_module_of_shared_or_services_imports_itself_through_others() -> None:
    graph = import_graph()
    assert "toolkit.calibration.cli" in graph and "services.novelty.main" in graph
    assert import_cycles(graph) == []


def test_the_novelty_service_does_not_import_the_calibration_toolkit() -> None:
    graph = import_graph()
    needed = reachable(graph, "services.novelty.main")
    assert "shared.index.policy" in needed and "shared.index.thresholds" in needed
    assert not {m for m in needed if m == "toolkit.calibration" or m.startswith("toolkit.calibration.")}


def test_the_calibration_toolkit_does_not_import_evaluation() -> None:
    graph = import_graph()
    assert not {
        (module, target)
        for module, targets in graph.items()
        if module.startswith("toolkit.calibration")
        for target in targets
        if target.startswith("toolkit.evaluation")
    }


def _layer(module: str) -> int:
    return PACKAGES.index(module.split(".", 1)[0])


def layer_violations(graph: dict[str, frozenset[str]]) -> list[tuple[str, str]]:
    """Imports that go up a layer, or from one service into another."""
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            upward = _layer(target) > _layer(module)
            parts, target_parts = module.split("."), target.split(".")
            across = (
                parts[0] == target_parts[0] == "services"
                and len(parts) > 1
                and len(target_parts) > 1
                and parts[1] != target_parts[1]
            )
            if upward or across:
                wrong.append((module, target))
    return sorted(wrong)


def test_the_layer_check_catches_upward_and_sideways_imports() -> None:
    graph = {
        "shared.a": frozenset({"app.cli"}),
        "services.x.core": frozenset({"services.y.core", "shared.a", "toolkit.t"}),
        "services.y.core": frozenset(),
        "toolkit.t": frozenset({"shared.a"}),
        "app.cli": frozenset({"services.x.core"}),
    }
    assert layer_violations(graph) == [("services.x.core", "services.y.core"), ("shared.a", "app.cli")]


def test_every_import_goes_down_the_layers_and_no_service_imports_another() -> None:
    graph = import_graph()
    assert {"shared.runtime", "toolkit.litho", "services.dedupe.core", "app.cli"} <= set(graph)
    assert layer_violations(graph) == []

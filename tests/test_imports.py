"""The package's import graph: no circles, and the training side never reaches the app.

Read from the source with ``ast``, so an import inside a function counts (it still ties two
modules: neither can be understood, moved or tested without the other), while one under
``if TYPE_CHECKING:`` does not (it never runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import scu_tui

PACKAGE = Path(scu_tui.__file__).parent
#: These layers run without the app: a run in a terminal, a worker rank, a benchmark.
HEADLESS = ("scu_tui.control", "scu_tui.training")
#: ... so they never import these.
VIEWS = ("scu_tui.app", "scu_tui.remote")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports, wherever in its body, except under
    ``if TYPE_CHECKING:``. ``from a import b`` names module ``a.b`` when there is one."""
    found: set[str] = set()
    base = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                source = ".".join([*anchor, source] if source else anchor)
            found.add(source)
            for alias in node.names:
                found.add(f"{source}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out: set[str] = set()
    for name in found:
        # "scu_tui.app.feed" -> itself; "scu_tui.protocol.Knob" -> "scu_tui.protocol"
        while name and name not in known:
            name = name.rpartition(".")[0]
        # importing a module runs its package's __init__ first: not an edge of this module's
        if name and name != module and not module.startswith(name + "."):
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = imported(tree, name, path.name == "__init__.py", known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == GREY:
                return [*stack[stack.index(nxt) :], nxt]
            if colour.get(nxt) == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_reads_imports_inside_functions_and_skips_type_checking() -> None:
    """The reader itself: a function-level import is an edge, a TYPE_CHECKING one is not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from scu_tui.app import ScuApp\n"
        "def f():\n    from scu_tui.run import Run\n    from . import feed\n"
    )
    known = {"scu_tui.app", "scu_tui.run", "scu_tui.remote", "scu_tui.remote.feed"}
    edges = imported(ast.parse(source), "scu_tui.remote.x", False, known)
    assert edges == {"scu_tui.run", "scu_tui.remote.feed"}


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_control_and_training_never_import_the_app_or_remote() -> None:
    graph = import_graph()
    bad = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith(HEADLESS)
        for target in targets
        if target.startswith(VIEWS)
    )
    assert not bad, "the training side imports a view: " + "; ".join(bad)

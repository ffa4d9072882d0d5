"""The package structure the README draws: layers import downwards only, and nothing is circular.

Read from the source (runtime imports; `if TYPE_CHECKING:` blocks are types, not dependencies).
Runs without Postgres or Redis.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

# Lower layers first. A package may import its own layer's peers only where listed below.
LAYERS = [
    {"core"},
    {"models"},
    {"llm"},
    {"agent"},
    {"state"},
    {"auth"},
    {"files"},
    {"conversations", "runs", "memories", "agents", "usage"},
    {"turns"},
    {"chat"},
    {"health", "playground", "cli", "openai"},
    {"main"},
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}
PEERS_ALLOWED: set[tuple[str, str]] = set()


def package_of(path: Path) -> str:
    parts = path.relative_to(APP).with_suffix("").parts
    return parts[0] if parts[0] != "__init__" else "app"


def runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("app."))
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit([n for n in getattr(node, field, []) if isinstance(n, ast.stmt | ast.ExceptHandler)])  # type: ignore[misc]

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in APP.rglob("*.py"):
        source = package_of(path)
        for target in runtime_imports(path):
            if target != source:
                edges[source].add(target)
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {package_of(p) for p in APP.rglob("*.py")} - {"app", "py"}
    assert packages <= set(LAYER), f"place these in LAYERS: {sorted(packages - set(LAYER))}"


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if source in LAYER
        and target in LAYER
        and LAYER[target] >= LAYER[source]
        and (source, target) not in PEERS_ALLOWED
    ]
    assert upward == [], "imports up or across the layers: " + ", ".join(sorted(upward))


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[str] = []

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]) if nxt in trail else f"{node}->{nxt}")
            elif nxt not in state:
                walk(nxt, [*trail, nxt])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            walk(node, [node])
    assert cycles == []


def test_nothing_below_chat_imports_it() -> None:
    importers = sorted(source for source, targets in graph().items() if "chat" in targets)
    assert set(importers) <= {"main"}, importers  # a door; other doors share app/turns, not it

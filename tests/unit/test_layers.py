"""The package's layers, as its folders show them: every import (module level or inside a
function) goes to the same layer or a lower one, and the import graph has no cycle."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Bottom to top. The package __init__ is the facade: it re-exports lazily, by name.
LAYERS = [
    ("foundation", ("dlmi.errors", "dlmi.files", "dlmi.options", "dlmi.metrics")),
    ("model", ("dlmi.model",)),
    ("methods", ("dlmi.methods",)),
    ("inversion", ("dlmi.inversion",)),
    ("evaluation", ("dlmi.evaluation", "dlmi.presets")),
    ("prompting", ("dlmi.prompting",)),
    ("logit2prompt", ("dlmi.logit2prompt",)),
    ("cli", ("dlmi.cli",)),
]


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    graph = {}
    for path in sorted((SRC / "dlmi").rglob("*.py")):
        name = module_name(path)
        if name == "dlmi":
            continue
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("dlmi"):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("dlmi")}
        graph[name] = found
    return graph


def test_imports_only_go_down():
    upward = [f"{m} -> {t}" for m, targets in imports().items() for t in targets
              if t != "dlmi" and layer_of(t) > layer_of(m)]
    assert not upward, upward


def test_the_import_graph_has_no_cycle():
    graph = imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            assert state.get(nxt) != 1, " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])

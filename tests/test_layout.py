"""The package's shape: no import cycle between its modules (lazy imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "qwenvl"


def imports_of(path: Path) -> set[str]:
    """Package modules a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qwenvl."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("qwenvl."))
    return found


def test_no_import_cycle():
    modules = {p.stem: p for p in PACKAGE.glob("*.py")} | {p.name: p / "__init__.py" for p in PACKAGE.iterdir()
                                                           if (p / "__init__.py").is_file()}
    graph = {name: imports_of(path) & set(modules) - {name, "__init__"} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(trail + [name, dep])
            if dep not in state:
                visit(dep, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert graph["runner"] >= {"pipeline"} and "runner" not in graph["batch"] | graph["chat"]

"""The package's structure, as the code reads: no import cycles, an engine that imports no specific model, task
differences in seglab/tasks.py only, a CLI that only parses and calls, and package code that never reaches into
the repository's docs/ folder."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seglab"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the seglab modules it imports anywhere in its code (function-level imports included)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).rstrip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else resolve(base) for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t and t != module and t.startswith("seglab"))
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_import_graph_is_read_and_finds_a_planted_cycle():
    graph = import_graph()
    assert "seglab.models" in graph["seglab.engine.trainer"]  # a function-level or module-level import is seen
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert strongly_connected(import_graph()) == []


def test_the_engine_imports_no_specific_model_file():
    families = ("seglab.models.semantic", "seglab.models.instance", "seglab.models.parsing")
    for module, imported in import_graph().items():
        if module.startswith("seglab.engine"):
            assert not [m for m in imported if m.startswith(families)], module


def test_model_files_import_no_other_family():
    """Backbones and blocks shared by families live in seglab.models.backbones / layers, not in a family's file."""
    for module, imported in import_graph().items():
        parts = module.split(".")
        if len(parts) == 4 and parts[1] == "models" and parts[2] in ("semantic", "instance", "parsing"):
            foreign = [m for m in imported if m.startswith("seglab.models.") and m.split(".")[2] in
                       ("semantic", "instance", "parsing") and m.split(".")[2] != parts[2]]
            assert not foreign, (module, foreign)


def _calls_and_compares(path: Path) -> list[str]:
    """``x.task == ...`` / ``task != ...`` comparisons (task kinds told apart) in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            for side in (node.left, *node.comparators):
                name = side.attr if isinstance(side, ast.Attribute) else getattr(side, "id", None)
                if name in ("task", "detection_contract"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_tasks_are_told_apart_only_by_the_task_objects():
    # ort.py: the torch-free ONNX runner refuses files whose metadata names another task than semantic;
    # models/__init__.py: list_models(task=...) filters the registry by task
    allowed = {"seglab/tasks.py", "seglab/export/ort.py", "seglab/models/__init__.py"}
    branches = [hit for path in PACKAGE.rglob("*.py") if str(path.relative_to(ROOT)) not in allowed
                for hit in _calls_and_compares(path)]
    assert branches == []


def test_cli_functions_are_short():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert max(lengths.values()) <= 60, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]


def test_package_code_never_reaches_into_the_repository():
    """Scripts pass paths to docs/; the installed package has none. (The configs are package data, seglab/configs,
    found through seglab.recipes; the repository's configs/ links to them.)"""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("docs",):
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} names the repository's {node.value}/")
        text = path.read_text()
        assert "shared/reference" not in text and "reference/models.md" not in text, path

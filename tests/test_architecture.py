"""The layout holds: no module imports a layer above its own, no import cycle (imports inside
functions included, so none can hide one), no argparse outside the command line, and an import
kept inside a function to spare start-up time says so.

Layers, bottom to top (a module may import its own layer and those below):
  foundation   errors, pattern, records, bundle, device, references, plotting, physics, models, io, preprocess
  models       identification, spacegroup, transitions, steering, inference, classify
  nexus        nexus_definitions (the application definition, its writer, reader, validator, export)
  training     training
  evaluation   xrd_nexus_ml.evaluation, patterns_demo, transition_series, api (the front door)
  live         bluesky_callbacks
  cli          xrd_nexus_ml.cli
The package's own `__init__` (the front door's lazy names) is left out: it imports nothing at load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xrd_nexus_ml", "nexus_definitions", "bluesky_callbacks", "training")
F = ("errors", "pattern", "records", "bundle", "device", "references", "plotting", "physics", "models", "io",
     "preprocess")
LAYERS = [
    [f"xrd_nexus_ml.{m}" for m in F],
    [f"xrd_nexus_ml.{m}" for m in ("identification", "spacegroup", "transitions", "steering", "inference",
                                   "classify")],
    ["nexus_definitions"],
    ["training"],
    ["xrd_nexus_ml.evaluation", "xrd_nexus_ml.patterns_demo", "xrd_nexus_ml.transition_series", "xrd_nexus_ml.api"],
    ["bluesky_callbacks"],
    ["xrd_nexus_ml.cli"],
]


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = i, prefix.count(".")
    if best is None:
        raise AssertionError(f"{module}: in no layer; add it to tests/test_architecture.py LAYERS")
    return best


def _resolve(name: str) -> str | None:
    """The project module an imported name belongs to (None: not ours)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) of `module`, TYPE_CHECKING blocks left out."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    local_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    local_lines.add(child.lineno)
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        for name in names:
            target = _resolve(name)
            if target and target != module:
                out.append((target, node.lineno, node.lineno in local_lines))
    return out


GRAPH = {m: imports(m) for m in MODULES if m != "xrd_nexus_ml"}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


def test_no_layer_imports_upward():
    upward = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t} (layer {layer_of(t)} above {layer_of(m)})"
              for m, edges in GRAPH.items() for t, line, _ in edges
              if t != "xrd_nexus_ml" and layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (the import cycles)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_even_inside_functions():
    graph = {m: {t for t, _, _ in edges if t in GRAPH} for m, edges in GRAPH.items()}
    assert strongly_connected(graph) == []


def test_local_imports_of_the_project_say_why():
    """An import of the project kept inside a function carries a comment (start-up time, an
    optional dependency) on its line or the import lines just above it."""
    unexplained = []
    for module, edges in GRAPH.items():
        lines = MODULES[module].read_text().splitlines()
        for _, line, local in edges:
            if not local:
                continue
            block = lines[max(0, line - 4):line]
            if not any("# local:" in text or "# optional:" in text for text in block):
                unexplained.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
    assert not unexplained, "\n".join(unexplained)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("xrd_nexus_ml.cli")))
def test_only_the_command_line_parses_arguments(module):
    tree = ast.parse(MODULES[module].read_text())
    used = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "argparse" not in used, f"{module} imports argparse: flags belong in xrd_nexus_ml.cli"


def test_the_check_sees_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

"""The import rules of docs/architecture.md, checked from the source: imports point down the layers,
siblings stay apart, and no module imports itself back through others.

Every import counts, those inside functions too (fastai and friends are imported lazily, but a lazy
import of our own code is still a dependency); only type-only imports under `if TYPE_CHECKING:` are free.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# docs/architecture.md, "Layers": a module may import its own layer's modules and those of lower layers.
BASE = {"errors", "tables", "fileio", "registry", "config", "predictions", "blend_file", "curves"}
COMMANDS = {"train", "blend", "submit", "download", "kernels", "probe", "bench", "benchmark", "prepare_demo", "runs"}
LAYERS = {"base": 0, "data": 1, "training": 2, "ensemble": 2, "kaggle": 3, "launchers": 3, "commands": 4}
# Packages of one layer stay independent of each other, but for these (importer, imported) pairs.
SIBLINGS = {("launchers", "kaggle")}  # the Kaggle launcher is glue over kaggle/kernels


def unit(module: str) -> str:
    """The layer unit of a module: a package under pipeline/, "base" or "commands"."""
    parts = module.split(".")
    if parts[0] == "hydra_plugins":
        return "commands"  # Hydra's plugin names, loaded by Hydra alone
    if len(parts) == 1:
        return "base"  # `import pipeline`: the package root, which holds nothing
    if parts[1] in BASE:
        return "base"
    if parts[1] in COMMANDS:
        return "commands"
    if parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py and docs/architecture.md")


def source_modules() -> dict[str, Path]:
    files = [*(REPO / "pipeline").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]
    out = {}
    for f in files:
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def ours(module: str) -> bool:
    return module.split(".")[0] == "pipeline" or module.startswith("hydra_plugins.paddy_pipeline")


class _Imports(ast.NodeVisitor):
    """(line, imported module) for every import of our own modules, outside TYPE_CHECKING."""

    def __init__(self, module: str, known: set[str]) -> None:
        self.module, self.known, self.found = module, known, []

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(node.lineno, a.name) for a in node.names if ours(a.name)]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        assert node.level == 0, f"{self.module}:{node.lineno}: use absolute imports"
        base = node.module or ""
        if not ours(base):
            return
        for a in node.names:  # `from pipeline.data import demo` imports the module pipeline.data.demo
            self.found.append((node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in self.known else base))


def imports(modules: dict[str, Path]) -> dict[str, list[tuple[int, str]]]:
    out = {}
    for name, path in modules.items():
        visitor = _Imports(name, set(modules))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        out[name] = visitor.found
    return out


def violations(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Imports that run back up a layer, or across to a sibling package the rules keep apart."""
    bad = []
    for module, found in graph.items():
        here = unit(module)
        for line, target in found:
            there = unit(target)
            upward = LAYERS[there] > LAYERS[here]
            across = LAYERS[there] == LAYERS[here] and there != here and (here, there) not in SIBLINGS
            if upward or across:
                bad.append(f"{module}:{line} imports {target} ({here} -> {there})")
    return bad


def cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Import cycles among our modules (Tarjan's strongly connected components of two or more)."""
    edges = {m: sorted({t for _, t in found if t in graph and t != m}) for m, found in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_imports_point_down_the_layers():
    assert violations(imports(source_modules())) == []


def test_no_import_cycles():
    assert cycles(imports(source_modules())) == []


def test_the_rules_catch_an_import_back_up(tmp_path):
    graph = imports(source_modules())
    graph["pipeline.data.loaders"].append((1, "pipeline.training.learner"))  # data -> training
    graph["pipeline.ensemble.compute"].append((1, "pipeline.training.specs"))  # sibling packages
    graph["pipeline.training.learner"].append((1, "pipeline.data.loaders"))  # closes a cycle
    assert sorted(violations(graph)) == [
        "pipeline.data.loaders:1 imports pipeline.training.learner (data -> training)",
        "pipeline.ensemble.compute:1 imports pipeline.training.specs (ensemble -> training)",
    ]
    assert ["pipeline.data.loaders", "pipeline.training.learner"] in cycles(graph)


def test_type_only_imports_are_free():
    code = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.training.specs import RunSpec\n"
    visitor = _Imports("pipeline.data.x", set())
    visitor.visit(ast.parse(code))
    assert visitor.found == []


def test_every_module_has_a_layer():
    assert {module: unit(module) for module in source_modules()}.keys() == source_modules().keys()

"""The package's import graph: no circles, no imports of the CLIs, the experiments or sideways.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of every module, at top level or inside a function, with relative imports
resolved. A name imported from a package that only re-exports it (``from ..modeling import
model_config``) counts as an import of the module that defines it (``modeling.encoder_ops``), so a
package ``__init__`` that gathers its children never makes a circle on its own; what counts is a
circle between the modules that hold the code.

Rules (docs: the package map in ARCHITECTURE.md):
- no cycles among ``biglittle_sam`` modules;
- the library never imports the command-line wrappers (``tools``, ``demo`` and their installed
  names ``biglittle_sam_tools``, ``biglittle_sam_demo``);
- the installed code (``biglittle_sam``, ``tools``, ``demo``) never imports ``experiments``
  (experiments sit on top of the library, in the repository only; the wheel leaves them out);
- ``biglittle_sam.train`` and ``biglittle_sam.distill`` never import ``biglittle_sam.eval``
  (shared runtime code lives in ``biglittle_sam.runtime``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

import biglittle_sam

PACKAGE = "biglittle_sam"
ROOT = Path(biglittle_sam.__file__).resolve().parent
CLI_PACKAGES = ("tools", "demo", "biglittle_sam_tools", "biglittle_sam_demo")
EXPERIMENTS = "experiments"
# The command-line wrappers, installed with the package (as biglittle_sam_tools / _demo).
WRAPPERS = ("tools", "demo")
TRAINING = (f"{PACKAGE}.train", f"{PACKAGE}.distill")
EVAL = f"{PACKAGE}.eval"

# (importer, imported) edges allowed to break a rule while a restructure is under way. Empty: an
# entry that no longer matches an edge fails the test, so the list cannot go stale.
VIOLATIONS_BEING_FIXED: Tuple[Tuple[str, str], ...] = ()

Edge = Tuple[str, str]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(module: str, path: Path, level: int, target: Optional[str]) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    package = module if _is_package(path) else module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{target}" if target else base


def _imports(module: str, path: Path) -> Iterator[Tuple[str, Optional[str]]]:
    """(imported module, imported name or None) for every import statement of ``module``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path, node.level, node.module)
            for alias in node.names:
                yield source, alias.name


class ImportGraph:
    """Edges between ``biglittle_sam`` modules, plus every import of anything outside it."""

    def __init__(self) -> None:
        self.modules = _modules()
        self.raw: Dict[str, List[Tuple[str, Optional[str]]]] = {
            m: list(_imports(m, p)) for m, p in self.modules.items()
        }
        self.edges: Set[Edge] = set()
        self.external: Set[Edge] = set()  # (module, imported top-level name outside the package)
        for module, imports in self.raw.items():
            for source, name in imports:
                if source != PACKAGE and not source.startswith(PACKAGE + "."):
                    self.external.add((module, source.split(".")[0]))
                    continue
                self.edges.add((module, self.defining_module(source, name)))

    def defining_module(self, source: str, name: Optional[str], seen: int = 0) -> str:
        """The module behind ``from source import name``: a submodule of that name, else the
        module a package ``__init__`` re-exports the name from, else ``source`` itself."""
        if name is None or seen > 20:
            return source
        if f"{source}.{name}" in self.modules:
            return f"{source}.{name}"
        path = self.modules.get(source)
        if path is None or not _is_package(path):
            return source
        for inner, inner_name in self.raw[source]:
            if inner_name == name and (inner == PACKAGE or inner.startswith(PACKAGE + ".")):
                return self.defining_module(inner, inner_name, seen + 1)
        return source

    def cycles(self) -> List[List[str]]:
        """Strongly connected components with more than one module (Tarjan), sorted."""
        graph: Dict[str, List[str]] = {m: [] for m in self.modules}
        for a, b in self.edges:
            if b in graph and a != b:
                graph[a].append(b)
        index: Dict[str, int] = {}
        low: Dict[str, int] = {}
        stack: List[str] = []
        on_stack: Set[str] = set()
        found: List[List[str]] = []
        counter = [0]

        def visit(v: str) -> None:
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on_stack.add(v)
            for w in graph[v]:
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for v in sorted(graph):
            if v not in index:
                visit(v)
        return sorted(found)


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _report(edges: Set[Edge]) -> str:
    return "\n".join(f"  {a} -> {b}" for a, b in sorted(edges))


def _not_allowed(edges: Set[Edge]) -> Set[Edge]:
    return edges - set(VIOLATIONS_BEING_FIXED)


def test_graph_is_read_from_the_source(graph: ImportGraph) -> None:
    """The reader sees top-level, in-function and relative imports, and resolves re-exports."""
    assert len(graph.modules) > 40
    assert (f"{PACKAGE}.build_sam", f"{PACKAGE}.checkpoint") in graph.edges  # top level, relative
    # flops imports model_config from the package modeling/, which re-exports it.
    assert (f"{PACKAGE}.flops", f"{PACKAGE}.modeling.encoder_ops") in graph.edges
    assert (f"{PACKAGE}.data.records", f"{PACKAGE}.data.errors") in graph.edges
    assert any(a == f"{PACKAGE}.data.masks" and b == "pycocotools" for a, b in graph.external)
    assert ("tests.fake", "x") not in graph.edges


def test_the_cycle_finder_finds_cycles() -> None:
    fake = ImportGraph.__new__(ImportGraph)
    fake.modules = {m: Path(f"{m}.py") for m in ("a", "b", "c", "d")}
    fake.edges = {("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}
    assert fake.cycles() == [["a", "b", "c"]]
    fake.edges = {("a", "b"), ("b", "c"), ("a", "c")}
    assert fake.cycles() == []


def test_no_import_cycles(graph: ImportGraph) -> None:
    cycles = graph.cycles()
    assert not cycles, "import cycles among biglittle_sam modules:\n" + "\n".join(
        "  " + " <-> ".join(c) for c in cycles
    )


def test_library_never_imports_the_command_line_wrappers(graph: ImportGraph) -> None:
    bad = {(a, b) for a, b in graph.external if b in CLI_PACKAGES}
    assert not bad, "the library imports tools/ or demo/:\n" + _report(bad)


def _wrapper_imports() -> Set[Edge]:
    """(module, imported top-level name) for every import in ``tools/`` and ``demo/``."""
    found: Set[Edge] = set()
    for folder in WRAPPERS:
        for path in sorted((ROOT.parent / folder).rglob("*.py")):
            module = _module_name(path)
            found |= {(module, source.split(".")[0]) for source, _ in _imports(module, path)}
    return found


def test_the_installed_code_never_imports_the_experiments(graph: ImportGraph) -> None:
    wrappers = _wrapper_imports()
    assert ("tools.distill", PACKAGE) in wrappers  # the scan reads the wrappers
    bad = {(a, b) for a, b in graph.external | wrappers if b == EXPERIMENTS}
    assert not _not_allowed(bad), "imports of experiments/:\n" + _report(bad)


def test_training_never_imports_eval(graph: ImportGraph) -> None:
    bad = {
        (a, b) for a, b in graph.edges if any(_within(a, t) for t in TRAINING) and _within(b, EVAL)
    }
    assert not _not_allowed(bad), "train/ or distill/ import eval/:\n" + _report(_not_allowed(bad))


def test_the_allow_list_holds_only_current_violations(graph: ImportGraph) -> None:
    stale = set(VIOLATIONS_BEING_FIXED) - graph.edges
    assert not stale, "fixed: remove from VIOLATIONS_BEING_FIXED:\n" + _report(stale)

"""Each extra's environment on paper: every module imports only what core and its extra declare.

A user installs ``biglittle-sam`` (core) or ``biglittle-sam[EXTRA]``; a module they then run must
find every third-party package it imports. For every module under ``biglittle_sam/``, ``tools/``,
``demo/`` and ``experiments/`` (run from a clone, with the extra its home names), this test
collects the imports that running it can reach: its own imports (top level and inside functions,
and ``importlib.import_module("x")`` with a literal name), and, transitively, those of every
project module it imports (a package's ``__init__`` included). An import reached
only inside a function still counts: the demo's *Download mask* imports pycocotools inside
``data.masks.encode_mask``, and a ``[demo]`` install without it fails when the user clicks. Imports
under ``if TYPE_CHECKING:`` do not run and are skipped.

Every module has a home (``HOMES``): the extra its user installs to run it. Its reachable
third-party imports must be declared by core (``install_requires``) or by that extra. A module
shared by features of several extras (the dataset readers) lists them all, and must work under
each. A module not named in ``HOMES`` is core: a new module with an optional dependency fails here
until it is given a home.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import importlib.util
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> source folder (setup.cfg package_dir).
SOURCE_FOLDERS = {"biglittle_sam": "biglittle_sam", "biglittle_sam_tools": "tools"}
SOURCE_FOLDERS["biglittle_sam_demo"] = "demo"
SCANNED = ("biglittle_sam", "tools", "demo", "experiments")

# Module path prefix (relative to the repository, "/" separated) -> the extras whose users run it.
# The longest matching prefix wins; modules matching none are core.
HOMES: Dict[str, Tuple[str, ...]] = {
    "biglittle_sam/demo/": ("demo",),
    "demo/": ("demo",),
    "biglittle_sam/eval/": ("eval",),
    "tools/eval_miou.py": ("eval",),
    # Readers and writers of COCO / LVIS / SA-1B / shapes data: evaluation and training use them.
    "biglittle_sam/data/": ("eval", "train"),
    "biglittle_sam/train/": ("train",),
    "biglittle_sam/distill/": ("train",),
    "experiments/proxy/": ("train",),
    "experiments/proxy2/": ("train",),
    "experiments/stages.py": ("train",),
    "experiments/runs.py": ("train",),
    # The training-free mode on the proxy teacher: it draws proxy splits and evaluates them,
    # through the proxy package (whose matching reaches the dense timm students).
    "experiments/training_free": ("train",),
    "tools/distill.py": ("train",),
    "tools/finetune.py": ("train",),
    "tools/cache_teacher.py": ("train",),
    "tools/make_shapes_dataset.py": ("eval", "train"),
    "biglittle_sam/benchmark.py": ("bench",),
    "biglittle_sam/speed/": ("bench",),
    # make gpu-check distils on generated shapes too: a development tool, run from [all].
    "experiments/gpu_check.py": ("all",),
    "tools/benchmark.py": ("bench",),
    "biglittle_sam/export/": ("export",),
    "tools/export_onnx.py": ("export",),
    # --onnx profiles an exported file in onnxruntime; its torch and --macs modes need core only.
    "tools/profile_encoder.py": ("export",),
    "biglittle_sam/amg.py": ("amg",),
    # The transformers models, the swap and the converter to and from transformers folders.
    "biglittle_sam/hf/": ("hf",),
    # Its to-hf / from-hf subcommands import biglittle_sam.hf; the merge needs core only.
    "tools/convert_checkpoint.py": ("hf",),
    "tools/amg.py": ("amg",),
}

# Imports a module makes only when their third-party package is already imported, so they need
# nothing the module's home lacks: the transformers hook imports biglittle_sam.hf (transformers)
# only after `import transformers` has run (biglittle_sam/runtime/transformers_hook.py), and the
# cost model imports the SAM 3 counts only for a transformers SAM 3 model or config it was given.
GUARDED: Dict[str, FrozenSet[str]] = {
    "biglittle_sam/runtime/transformers_hook.py": frozenset({"biglittle_sam.hf"}),
    "biglittle_sam/flops.py": frozenset({"biglittle_sam.hf.sam3_flops"}),
    # timm builds a timm dense student's encoder, which only a checkpoint that records one asks
    # for (distill writes them, with [train]); without timm the error names the package to install.
    "biglittle_sam/modeling/timm_encoder.py": frozenset({"timm"}),
}

# Import name -> the distributions that provide it, where the name does not say (any one will do).
PROVIDERS: Dict[str, FrozenSet[str]] = {
    "cv2": frozenset(
        {
            "opencv-python",
            "opencv-python-headless",
            "opencv-contrib-python",
            "opencv-contrib-python-headless",
        }
    ),
    "PIL": frozenset({"pillow"}),
    "segment_anything": frozenset({"segment-anything"}),
    "yaml": frozenset({"pyyaml"}),
}


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()  # with interpolation: extras may include others as %(name)s
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _names(block: str) -> FrozenSet[str]:
    """Distribution names of a setup.cfg requirement list (one per line, comments skipped)."""
    names = set()
    for line in block.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            names.add(_normalize(re.split(r"[\s<>=!~\[]", line, maxsplit=1)[0]))
    return frozenset(names)


@lru_cache(maxsize=None)
def declared() -> Dict[str, FrozenSet[str]]:
    """``{"core": names, extra: names, ...}`` from setup.cfg."""
    cfg = _setup_cfg()
    out = {"core": _names(cfg["options"]["install_requires"])}
    for extra, block in cfg["options.extras_require"].items():
        out[extra] = _names(block)
    return out


def home(path: str) -> Tuple[str, ...]:
    """The extras a module (repository-relative path) belongs to; () for core."""
    matches = [prefix for prefix in HOMES if path.startswith(prefix)]
    return HOMES[max(matches, key=len)] if matches else ()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> List[Tuple[str, int, Optional[str]]]:
    """(module, level, imported name or None) for every import that can run."""
    found: List[Tuple[str, int, Optional[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend((node.module or "", node.level, alias.name) for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__", "_require") and isinstance(
                arg, ast.Constant
            ):
                if isinstance(arg.value, str) and not arg.value.startswith("."):
                    found.append((arg.value, 0, None))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@lru_cache(maxsize=None)
def _module_file(dotted: str) -> Optional[Path]:
    """The source file of a project module (installed or source-folder name), or None."""
    top, _, rest = dotted.partition(".")
    folder = SOURCE_FOLDERS.get(top, top if top in SCANNED else None)
    if folder is None:
        return None
    base = ROOT.joinpath(folder, *rest.split(".")) if rest else ROOT / folder
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def direct(path: Path) -> Tuple[FrozenSet[Path], FrozenSet[str]]:
    """(project modules, third-party top-level names) that ``path`` imports itself."""
    dotted = _dotted(path)
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    local: Set[Path] = set()
    third: Set[str] = set()
    guarded = GUARDED.get(path.relative_to(ROOT).as_posix(), frozenset())
    for module, level, name in _imports(ast.parse(path.read_text(), str(path))):
        if level:
            base = package.split(".")
            base = base[: len(base) - (level - 1)]
            module = ".".join(base + ([module] if module else []))
        if module in guarded:
            continue
        targets = [module] + ([f"{module}.{name}"] if name and name != "*" else [])
        if _module_file(module) is None and module.split(".")[0] not in SOURCE_FOLDERS:
            top = module.split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in SCANNED + ("tests",):
                third.add(top)
            continue
        for target in targets:
            # The module itself, a submodule imported by name, and every package above them.
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:i]))
                if found is not None:
                    local.add(found)
    local.discard(path)
    return frozenset(local), frozenset(third)


def reachable(path: Path) -> Dict[str, Path]:
    """Third-party top-level name -> the project module that imports it, over everything ``path``
    can import (itself, the packages above it, and the project modules it imports, transitively)."""
    parents = [p / "__init__.py" for p in path.parents if (p / "__init__.py").is_file()]
    todo = [path] + [p for p in parents if ROOT in p.parents]
    seen: Set[Path] = set()
    third: Dict[str, Path] = {}
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        local, names = direct(current)
        for name in names:
            third.setdefault(name, current)
        todo.extend(local - seen)
    return third


@lru_cache(maxsize=None)
def providers(name: str) -> FrozenSet[str]:
    """Distributions that provide import name ``name``: a known alias, the distribution of the same
    name, or (slowest) whichever installed distributions ship it."""
    if name in PROVIDERS:
        return PROVIDERS[name]
    try:
        importlib.metadata.distribution(name)
        return frozenset({_normalize(name)})
    except importlib.metadata.PackageNotFoundError:
        installed = importlib.metadata.packages_distributions().get(name, [])
    return frozenset(_normalize(d) for d in installed) or frozenset({_normalize(name)})


def project_modules() -> List[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


def missing_for(path: Path) -> List[str]:
    """What ``path`` can import that neither core nor each of its extras declares."""
    decl = declared()
    problems = []
    relative = path.relative_to(ROOT).as_posix()
    for extra in home(relative) or ("core",):
        allowed = decl["core"] | decl.get(extra, frozenset())
        for name, where in sorted(reachable(path).items()):
            if not providers(name) & allowed:
                via = "" if where == path else f" (via {where.relative_to(ROOT).as_posix()})"
                label = "core" if extra == "core" else f"core + [{extra}]"
                problems.append(
                    f"{relative}: imports {name}{via}, which {label} does not declare "
                    f"(one of {sorted(providers(name))})"
                )
    return problems


def test_every_module_imports_only_what_its_extra_declares() -> None:
    problems = [line for path in project_modules() for line in missing_for(path)]
    assert not problems, "\n".join(problems)


def test_homes_name_declared_extras_and_real_paths() -> None:
    extras = set(declared()) - {"core"}
    for prefix, homes in HOMES.items():
        assert set(homes) <= extras, f"HOMES[{prefix!r}] names an extra setup.cfg does not declare"
    # Every extra with modules is used by at least one module that exists today.
    used = {
        extra for path in project_modules() for extra in home(path.relative_to(ROOT).as_posix())
    }
    assert {"demo", "eval", "train", "bench", "export"} <= used


def test_core_is_small_and_opencv_is_not_in_it() -> None:
    """Core is what the model and predictor need; OpenCV would replace a user's own build."""
    core = declared()["core"]
    assert core == {"torch", "torchvision", "segment-anything", "numpy", "tqdm"}
    for extra in ("demo", "eval", "train", "bench", "export", "dev", "amg"):
        assert extra in declared(), f"setup.cfg lacks the [{extra}] extra"
    all_extras = set().union(*(v for k, v in declared().items() if k not in ("core", "all")))
    assert all_extras <= declared()["all"], "[all] must hold every other extra"


def test_demo_extra_has_the_download_and_train_has_its_plots() -> None:
    """Issue 15: ``.[demo]`` alone must make *Download mask* work (pycocotools), and training's
    needs come with ``[train]`` (its loss plot imports matplotlib; its progress bar is core tqdm).
    """
    assert {"gradio", "pycocotools"} <= declared()["demo"]
    assert "matplotlib" in declared()["train"]
    assert {"timm", "fvcore"} <= declared()["bench"]


def test_segment_anythings_import_time_needs_are_core() -> None:
    """segment-anything declares no requirements, yet importing it imports torchvision (top level of
    ``automatic_mask_generator`` and ``utils/transforms``): core must declare what it needs."""
    sa = importlib.util.find_spec("segment_anything")
    if sa is None or not sa.submodule_search_locations:
        pytest.skip("segment_anything is not installed")
    core = declared()["core"]
    needed = set()
    for path in Path(list(sa.submodule_search_locations)[0]).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # top level only: what ``import segment_anything`` runs
            if isinstance(node, ast.Import):
                needed.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                needed.add(node.module.split(".")[0])
    needed -= set(sys.stdlib_module_names) | {"segment_anything"}
    assert needed, "found no imports in segment_anything: the scan is broken"
    for name in sorted(needed):
        assert providers(name) & core, f"segment_anything imports {name}; core must declare it"


# The checks above are only as good as the scan: check the scan on inputs whose answer is known.


def test_scan_follows_lazy_and_transitive_imports() -> None:
    demo = [p for p in (ROOT / "biglittle_sam" / "demo").glob("*.py")]
    found = {name for path in demo for name in reachable(path)}
    # pycocotools is imported only inside data.masks' functions, which the demo's download uses.
    assert "pycocotools" in found
    assert "gradio" not in reachable(ROOT / "biglittle_sam" / "fileio.py")
    # onnxruntime is imported by name through importlib, only when an export is checked.
    assert "onnxruntime" in reachable(ROOT / "biglittle_sam" / "export" / "check.py")


def test_scan_reads_import_forms() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy as np\n"
        "from .x import y\n"
        "if TYPE_CHECKING:\n"
        "    import pandas\n"
        "def f():\n"
        "    import scipy.ndimage\n"
        "    importlib.import_module('h5py')\n"
        "    importlib.import_module(name)\n"
    )
    names = {m for m, level, _ in _imports(ast.parse(source)) if not level}
    assert names == {"typing", "numpy", "scipy.ndimage", "h5py"}


def test_a_module_with_an_undeclared_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    fileio = ROOT / "biglittle_sam" / "fileio.py"
    real = direct

    def with_cv2(path: Path) -> Tuple[FrozenSet[Path], FrozenSet[str]]:
        local, third = real(path)
        return (local, third | {"cv2"}) if path == fileio else (local, third)

    monkeypatch.setattr(sys.modules[__name__], "direct", with_cv2)
    problems = missing_for(fileio)
    assert any("imports cv2" in line and "opencv-python-headless" in line for line in problems)
    # A module that imports fileio is told where the import comes from.
    user = next(
        p
        for p in project_modules()
        if fileio in real(p)[0] and not home(p.relative_to(ROOT).as_posix())
    )
    assert any("via biglittle_sam/fileio.py" in line for line in missing_for(user))

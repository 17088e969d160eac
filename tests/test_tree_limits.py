"""Size limits that keep the tree readable: no package file over 500 lines, no function over 80.

An ``ast`` walk over the source (nothing is imported). A function's length is
``end_lineno - lineno + 1``: from its ``def`` line to its last line, decorators excluded, with
methods and nested functions counted on their own too. The limits hold for the installed code: the
package (files and functions), and the command-line wrappers in ``tools/`` and ``demo/``
(functions). A failure names every offender, so a split can start from the list.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "biglittle_sam"
# Folders whose functions are held to MAX_FUNCTION_LINES (the package's files to MAX_FILE_LINES).
FUNCTION_ROOTS = (PACKAGE, "tools", "demo")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _sources(root: str) -> Iterator[Path]:
    yield from sorted((REPO / root).rglob("*.py"))


def _functions(path: Path) -> Iterator[Tuple[str, int]]:
    """(qualified name, length in lines) of every function and method in ``path``, nested ones
    included: ``Class.method``, ``outer.inner``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    stack: List[Tuple[str, ast.AST]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    end = child.end_lineno if child.end_lineno is not None else child.lineno
                    yield name, end - child.lineno + 1
                name += "."
            stack.append((name, child))


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_no_package_file_is_over_500_lines() -> None:
    offenders: List[str] = []
    for path in _sources(PACKAGE):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_FILE_LINES:
            offenders.append(f"{_relative(path)}: {lines} lines")
    assert not offenders, f"files over {MAX_FILE_LINES} lines (split them by job):\n" + "\n".join(
        offenders
    )


def test_no_function_is_over_80_lines() -> None:
    offenders: List[str] = []
    for root in FUNCTION_ROOTS:
        for path in _sources(root):
            for name, lines in sorted(_functions(path)):
                if lines > MAX_FUNCTION_LINES:
                    offenders.append(f"{_relative(path)}:{name}: {lines} lines")
    assert (
        not offenders
    ), f"functions over {MAX_FUNCTION_LINES} lines (make them a few named steps):\n" + "\n".join(
        offenders
    )


def test_the_walk_sees_the_tree() -> None:
    """Guard against a vacuous pass: the roots exist and hold code."""
    for root in FUNCTION_ROOTS:
        assert any(True for _ in _sources(root)), f"no Python files under {root}/"
    assert any(True for path in _sources(PACKAGE) for _ in _functions(path))

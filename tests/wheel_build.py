"""The project's wheel, built from a copy of the tree (for the ``wheel`` fixture in conftest)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
# Not part of a source distribution: what a checkout accumulates.
IGNORED = (
    ".git",
    ".venv",
    "build",
    "dist",
    "outputs",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
)


def checked_run(
    command: List[str], timeout: float = 600, **kwargs: object
) -> subprocess.CompletedProcess:
    """Run ``command``; fail the test with the tail of its output when it exits non-zero."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert (
        done.returncode == 0
    ), f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _can_build_without_isolation() -> bool:
    """setuptools builds wheels by itself from 70.1; older ones need the ``wheel`` package."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    major, minor = (int(p) for p in version.split(".")[:2])
    return (major, minor) >= (70, 1) or _installed("wheel")


def build_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of the tree under ``tmp`` (so no ``build/`` or ``*.egg-info``
    lands in the checkout); returns its path."""
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist")]
    if _can_build_without_isolation():
        command.append("--no-build-isolation")  # else pip fetches setuptools from the index
    checked_run(command + [str(source)])
    (built,) = (tmp / "dist").glob("biglittle_sam-*.whl")
    return built

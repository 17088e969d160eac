"""Packaging: every package folder is declared, and every console script points at a real main()."""

from __future__ import annotations

import configparser
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> source folder (setup.cfg package_dir).
SOURCE_FOLDERS = {"biglittle_sam_tools": "tools", "biglittle_sam_demo": "demo"}


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_every_package_folder_is_listed() -> None:
    listed = set(_setup_cfg()["options"]["packages"].split())
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "biglittle_sam").rglob("__init__.py")
    }
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"


def test_console_scripts_resolve() -> None:
    scripts = _setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    assert scripts
    for line in scripts:
        name, target = (s.strip() for s in line.split("="))
        module, func = target.split(":")
        installed, rest = module.split(".", 1)
        assert installed in SOURCE_FOLDERS, f"{name}: {module} is not in tools/ or demo/"
        local = importlib.import_module(f"{SOURCE_FOLDERS[installed]}.{rest}")
        assert callable(getattr(local, func)), name


def test_console_scripts_exit_zero_when_main_returns_a_result(monkeypatch) -> None:
    """pip's console scripts call sys.exit(entry()): a dict or Path there would print and exit 1."""
    import types

    console = importlib.import_module("tools.console")
    scripts = _setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    tools = [line.split(":")[1].strip() for line in scripts if ".console:" in line]
    assert len(tools) >= 10
    for tool in tools:
        module = importlib.import_module(f"tools.{tool}")
        for returned, status in (({"report": 1}, 0), (Path("x"), 0), (None, 0), (2, 2)):
            monkeypatch.setattr(module, "main", lambda r=returned: r)
            assert getattr(console, tool)() == status, tool
        assert isinstance(getattr(console, tool), types.FunctionType)

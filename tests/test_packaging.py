"""Packaging: every package folder is declared, every console script points at a real main(),
and the wheel holds the library and the user tools, not the experiments."""

from __future__ import annotations

import configparser
import importlib
import re
import zipfile
from pathlib import Path
from typing import List

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


def test_the_wheel_holds_no_experiment_and_no_recipe(wheel: Path) -> None:
    """The experiments (``experiments/``, the old ``biglittle_sam/benchmarks``) and their recipe
    history run from a clone; a user's install gets none of them."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert any(n.startswith("biglittle_sam/speed/") for n in names)  # the user's speed benchmark
    assert not [n for n in names if n.startswith("experiments/")]
    assert not [n for n in names if n.startswith("biglittle_sam/benchmarks")]
    assert not [n for n in names if n.endswith((".yaml", ".yml", ".toml"))]
    assert "experiments" not in _setup_cfg()["options"]["packages"]


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


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown_pages() -> List[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_documentation_links_resolve_inside_the_repository() -> None:
    """Every relative link in the README and docs/ names a file of this repository: the project
    stands alone, and a page that moved leaves no dangling link."""
    problems = []
    for page in _markdown_pages():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not a link
        for target in LINK.findall(re.sub(r"`[^`\n]*`", "", text)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor on the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                problems.append(f"{page.relative_to(ROOT)}: {target}")
    assert not problems, "dangling links:\n" + "\n".join(problems)


MD_NAME = re.compile(r"[\w./-]*[\w-]\.md\b")


def test_documentation_cites_no_file_outside_the_repository() -> None:
    """Every markdown file a page names, linked or not, is a file of this repository: the project
    stands alone, so its pages never send a user to notes they do not have. Reports the tools
    write (``proxy_benchmark.md``) count as the repository's: the package or the experiments name
    them."""
    names = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    folders = (ROOT / "biglittle_sam", ROOT / "experiments")
    source = "".join(p.read_text() for folder in folders for p in folder.rglob("*.py"))
    names |= set(re.findall(r"[\w-]+\.md\b", source))
    problems = []
    for page in _markdown_pages():
        for cited in MD_NAME.findall(page.read_text()):
            if cited.startswith("../") or cited.rsplit("/", 1)[-1] not in names:
                problems.append(f"{page.relative_to(ROOT)}: {cited}")
    assert not problems, "cites files outside the repository:\n" + "\n".join(problems)


def test_readme_is_short_and_has_the_user_sections() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "details belong in docs/"
    for section in ("## Install", "## Quick start", "## SAM checkpoints", "## Command-line tools"):
        assert section in text
    for name in ("sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth"):
        assert name in text
    # Every console script appears in the README's table.
    for line in _setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines():
        assert f"`{line.split('=')[0].strip()}`" in text, line


def test_license_and_citation() -> None:
    metadata = _setup_cfg()["metadata"]
    assert metadata["license"] == "Apache-2.0" and "LICENSE" in metadata["license_files"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    citation = (ROOT / "CITATION.cff").read_text()
    assert "cff-version:" in citation
    assert 'title: "big.LITTLE Vision Transformer for Efficient Visual Recognition"' in citation
    assert 'title: "Segment Anything"' in citation and "Kirillov" in citation

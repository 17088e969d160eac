"""The built wheel, installed into fresh venvs: ``[demo]`` alone runs the demo, including the mask
download; core alone imports ``biglittle_sam`` and builds ``bl_tiny``.

How, and why not a plain ``pip install`` by default: installing torch into a fresh venv takes
about 2 minutes even from a local index, too slow for the default suite. So the default tests build
the wheel once per session (the ``wheel`` fixture in conftest; from a copy of the tree, so no
``build/`` or ``*.egg-info`` lands in the checkout),
install it with ``--no-deps`` into a venv made ``--without-pip``, and let that venv see exactly the
distributions the wheel requires, taken from the running environment: the wheel's own
``Requires-Dist`` (markers evaluated for core, or core plus ``demo``) is resolved transitively
through the installed distributions' metadata, and each required distribution's files (its RECORD)
are linked into one folder that a ``.pth`` file adds to the venv. Nothing else is visible there (the
core venv checks that gradio, OpenCV and pycocotools are absent), so a requirement missing from
setup.cfg is missing in the venv too, and the demo's download fails as it would for a user. The
scripts run with ``python -I`` from a temporary folder, so the checkout is not importable.

``test_real_pip_install_of_demo_extra`` (marked ``slow``) is the full variant: a fresh venv with
pip, ``pip install "<wheel>[demo]"`` from the configured index, and the same demo script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Set

import pytest

from .wheel_build import checked_run as _run

packaging_requirements = pytest.importorskip("packaging.requirements")

CORE_SCRIPT = """
import importlib.util, json, subprocess, sys
from pathlib import Path

import biglittle_sam
import torch
from biglittle_sam import sam_model_registry

assert "site-packages" in biglittle_sam.__file__, biglittle_sam.__file__
model = sam_model_registry["bl_tiny"]()
size = model.image_encoder.img_size
with torch.no_grad():
    embedding = model.image_encoder(torch.zeros(1, 3, size, size))
absent = [m for m in ("gradio", "cv2", "pycocotools", "matplotlib")
          if importlib.util.find_spec(m) is not None]
script = Path(sys.executable).parent / "biglittle-sam-convert"
help_run = subprocess.run([str(script), "--help"], capture_output=True, text=True)
print(json.dumps({"embedding": list(embedding.shape),
                  "decoder_dim": model.prompt_encoder.embed_dim, "visible_optional": absent,
                  "convert_help": help_run.returncode}))
"""

DEMO_SCRIPT = """
import json, sys
from pathlib import Path

import numpy as np
from PIL import Image
import biglittle_sam_demo
from biglittle_sam_demo import app
from biglittle_sam.data.masks import decode_rle
from biglittle_sam.demo.models import load_models
from biglittle_sam.demo.controller import DemoController
from biglittle_sam.demo.page import build_demo
from biglittle_sam.demo.session import DemoSession, Settings

out = Path(sys.argv[1])
models = load_models(builtin=True)  # the proxy models shipped as package data
examples = sorted((Path(biglittle_sam_demo.__file__).parent / "examples").glob("*.png"))
build_demo(models, export_dir=out)  # the Gradio page and its handlers
controller = DemoController(models, export_dir=out)
settings = Settings(model=controller.default_model(), keep_ratio=0.5)
session = DemoSession()
image = np.asarray(Image.open(examples[0]).convert("RGB"))
loaded = controller.load(session, image, settings)
h, w = image.shape[:2]
clicked = controller.click(session, settings, w * session.scale / 2, h * session.scale / 2)
candidates = int(session.prediction.masks.shape[0])
files, view = controller.export(session, settings)
png, rle = files
mask = np.asarray(Image.open(png)) > 0
document = json.loads(Path(rle).read_text())
decoded = decode_rle(document["annotations"][0]["segmentation"]).astype(bool)
everything = controller.everything(session, settings, 4)
print(json.dumps({"models": len(models), "examples": len(examples),
                  "levels": [loaded.level, clicked.level, view.level, everything.level],
                  "files": [Path(f).suffix for f in files], "mask_pixels": int(mask.sum()),
                  "rle_matches_png": bool(np.array_equal(decoded, mask)),
                  "masks": candidates, "everything": len(session.everything or [])}))
"""


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheel_requirements(wheel: Path) -> List["packaging_requirements.Requirement"]:
    """``Requires-Dist`` of the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(name).decode()
    return [
        packaging_requirements.Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def _applies(requirement: "packaging_requirements.Requirement", extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": e}) for e in set(extras) | {""})


def resolve(wheel: Path, extras: Iterable[str]) -> Dict[str, metadata.Distribution]:
    """Every installed distribution that ``wheel[extras]`` needs, transitively (name -> dist).

    A direct requirement the running environment lacks skips the test (``make test`` installs
    ``.[all]``); a transitive one it lacks is not needed here, since the running environment
    works without it.
    """
    found: Dict[str, metadata.Distribution] = {}
    todo = [(r, True) for r in wheel_requirements(wheel) if _applies(r, extras)]
    while todo:
        requirement, direct = todo.pop()
        name = _normalize(requirement.name)
        if name in found:
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            if direct:
                pytest.skip(f"{requirement.name} is not installed here (make test installs .[all])")
            continue
        found[name] = dist
        for sub in dist.requires or []:
            parsed = packaging_requirements.Requirement(sub)
            if _applies(parsed, requirement.extras):
                todo.append((parsed, False))
    return found


def link_folder(dists: Iterable[metadata.Distribution], folder: Path) -> Path:
    """A folder holding links to the top-level entries (packages, modules, ``*.dist-info``,
    ``*.libs``) of ``dists`` and nothing else."""
    folder.mkdir(parents=True)
    for dist in dists:
        tops: Set[str] = set()
        for file in dist.files or []:
            if file.parts and file.parts[0] != ".." and not file.parts[0].endswith(".pth"):
                tops.add(file.parts[0])
        assert tops, f"{dist.metadata['Name']} lists no files (no RECORD): cannot link it"
        for top in tops:
            target = Path(dist.locate_file(top))
            link = folder / top
            if target.exists() and not link.exists():
                link.symlink_to(target)
    return folder


def make_venv(folder: Path, wheel: Path, extras: Iterable[str]) -> Path:
    """A venv with the wheel installed and only the distributions ``wheel[extras]`` needs."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = link_folder(resolve(wheel, extras).values(), folder / "deps")
    (Path(purelib) / "biglittle_sam_deps.pth").write_text(f"{deps}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", str(wheel)])  # fmt: skip
    return python


def run_script(python: Path, script: str, cwd: Path, *args: str) -> dict:
    """Run ``script`` isolated (``-I``: no checkout on the path) and return its JSON line."""
    path = cwd / "check.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = _run([str(python), "-I", str(path), *args], cwd=cwd, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_install_imports_and_builds_bl_tiny(wheel: Path, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv", wheel, ())
    report = run_script(python, CORE_SCRIPT, tmp_path)
    assert report["embedding"][:2] == [1, report["decoder_dim"]]
    assert report["visible_optional"] == [], "the core venv must not see optional packages"
    assert report["convert_help"] == 0, "console scripts are installed and run"


def test_demo_extra_alone_runs_the_demo_and_the_download(wheel: Path, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv", wheel, ("demo",))
    (tmp_path / "out").mkdir()
    report = run_script(python, DEMO_SCRIPT, tmp_path, str(tmp_path / "out"))
    assert report["models"] >= 2 and report["examples"] >= 1, "package data is in the wheel"
    assert report["levels"][:3] == ["info", "info", "info"], report
    assert report["files"] == [".png", ".json"] and report["mask_pixels"] > 0
    assert report["rle_matches_png"] and report["masks"] == 3
    assert report["levels"][3] != "error"


def test_the_venv_sees_only_what_is_required(wheel: Path) -> None:
    """The resolution the fast tests rely on: core lacks the demo's packages, [demo] adds them."""
    core = set(resolve(wheel, ()))
    demo = set(resolve(wheel, ("demo",)))
    assert {"torch", "numpy", "segment-anything", "torchvision", "tqdm"} <= core
    assert not {"gradio", "pycocotools", "opencv-python-headless", "matplotlib"} & core
    assert {"gradio", "pycocotools", "opencv-python-headless"} <= demo
    assert "timm" not in demo and "pytest" not in demo


def test_wheel_ships_the_license_and_the_package_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert any(n.endswith(".dist-info/LICENSE") or n.endswith("licenses/LICENSE") for n in names)
    assert any(n.startswith("biglittle_sam/assets/") and n.endswith(".pth") for n in names)
    assert any(n.startswith("biglittle_sam_demo/examples/") for n in names)
    assert not any(n.startswith(("tests/", "tools/", "demo/")) for n in names)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_real_pip_install_of_demo_extra(wheel: Path, tmp_path: Path) -> None:
    """``pip install "<wheel>[demo]"`` into a fresh venv from the configured index (minutes)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", f"{wheel}[demo]"], timeout=3000)
    (tmp_path / "out").mkdir()
    report = run_script(python, DEMO_SCRIPT, tmp_path, str(tmp_path / "out"))
    assert report["files"] == [".png", ".json"] and report["rle_matches_png"]


def test_link_folder_holds_a_distributions_entries(tmp_path: Path) -> None:
    dist = metadata.distribution("numpy")
    folder = link_folder([dist], tmp_path / "deps")
    assert (folder / "numpy").resolve() == Path(dist.locate_file("numpy")).resolve()
    assert any(p.name.endswith(".dist-info") for p in folder.iterdir())
    assert not (folder / "torch").exists()

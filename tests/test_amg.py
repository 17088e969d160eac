"""biglittle-sam-amg: scripts/amg.py's output layout, resume, and unreadable images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
import torch

from biglittle_sam import sam_model_registry, save_model_checkpoint
from biglittle_sam.amg import METADATA_HEADER, find_images
from tests.conftest import randomize_
from tools import amg

# Keep every mask a random model proposes: the thresholds are for trained models.
FAST = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


@pytest.fixture(scope="module")
def bl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ``bl_tiny`` in this project's checkpoint format."""
    torch.manual_seed(0)
    model = randomize_(sam_model_registry["bl_tiny"](), std=0.05)
    path = tmp_path_factory.mktemp("amg") / "bl_tiny.pth"
    save_model_checkpoint(path, model, model.image_encoder.config)
    return path


def _images(folder: Path, names: List[str]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        image = np.zeros((48, 64, 3), np.uint8)
        image[8:30, 10:40] = rng.integers(0, 255, 3)  # a flat rectangle on black
        cv2.imwrite(str(folder / name), image)
    return folder


def _run(args: List[str]) -> int:
    return amg.main(args + FAST + ["--device", "cpu", "--no-progress"])


def test_png_layout_and_rerun_skips(bl_checkpoint: Path, tmp_path: Path, capsys) -> None:
    images = _images(tmp_path / "in", ["a.png", "b.jpg"])
    out = tmp_path / "out"
    args = ["--input", str(images), "--output", str(out), "--model-type", "bl_tiny"]
    assert _run(args + ["--checkpoint", str(bl_checkpoint), "--keep-ratio", "0.5"]) == 0
    assert "2 written, 0 done before, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    for stem in ("a", "b"):
        rows = (out / stem / "metadata.csv").read_text().split("\n")
        assert rows[0] == METADATA_HEADER and len(rows) > 1
        pngs = sorted(p.name for p in (out / stem).glob("*.png"))
        assert pngs == sorted(f"{i}.png" for i in range(len(rows) - 1))
        for row in rows[1:]:
            fields = row.split(",")
            assert len(fields) == len(METADATA_HEADER.split(","))
            mask = cv2.imread(str(out / stem / f"{fields[0]}.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
            assert int(fields[1]) == int((mask == 255).sum())  # the area column

    first = (out / "a" / "metadata.csv").stat().st_mtime_ns
    # b was interrupted before its metadata.csv: only its temporary folder is there
    shutil.rmtree(out / "b")
    (out / ".b.partial").mkdir()
    (out / ".b.partial" / "99.png").write_bytes(b"stale")
    assert _run(args + ["--checkpoint", str(bl_checkpoint)]) == 0
    assert "1 written, 1 done before, 0 failed" in capsys.readouterr().out
    assert (out / "a" / "metadata.csv").stat().st_mtime_ns == first
    assert (out / "b" / "metadata.csv").is_file() and not (out / "b" / "99.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]


def test_rle_json_per_image(tmp_path: Path, tiny_sam_checkpoint: Path) -> None:
    images = _images(tmp_path / "in", ["x.png"])
    out = tmp_path / "out"
    code = _run(
        ["--input", str(images / "x.png"), "--output", str(out), "--model-type", "vit_tiny"]
        + ["--checkpoint", str(tiny_sam_checkpoint), "--convert-to-rle"]
    )
    assert code == 0
    assert [p.name for p in out.iterdir()] == ["x.json"]
    masks = json.loads((out / "x.json").read_text())
    assert masks and set(masks[0]["segmentation"]) == {"size", "counts"}
    assert masks[0]["segmentation"]["size"] == [48, 64]


def test_unreadable_images_listed_others_written(tmp_path: Path, capsys) -> None:
    images = _images(tmp_path / "in", ["good.png"])
    (images / "broken.jpg").write_bytes(b"not an image")
    (images / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    code = _run(["--input", str(images), "--output", str(out), "--model-type", "bl_tiny"])
    assert code == 1
    captured = capsys.readouterr()
    assert "1 written, 0 done before, 2 failed" in captured.out
    assert f"skipped {images / 'broken.jpg'}" in captured.err
    assert f"skipped {images / 'notes.txt'}" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["good"]


def test_foreign_folder_in_the_way_is_listed(tmp_path: Path, capsys) -> None:
    images = _images(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)  # not written by this tool: no metadata.csv
    code = _run(["--input", str(images), "--output", str(out), "--model-type", "bl_tiny"])
    assert code == 1
    assert "exists without metadata.csv" in capsys.readouterr().err
    assert (out / "b" / "metadata.csv").is_file() and not any((out / "a").iterdir())


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        _run(
            [
                "--input",
                str(tmp_path / "none"),
                "--output",
                str(tmp_path),
                "--model-type",
                "bl_tiny",
            ]
        )
    assert info.value.code == 2 and "no such file or folder" in capsys.readouterr().err
    images = _images(tmp_path / "in", ["a.png"])
    with pytest.raises(SystemExit) as info:
        _run(["--input", str(images), "--output", str(tmp_path / "o"), "--model-type", "vit_q"])
    assert info.value.code == 2 and "unknown; expected one of" in capsys.readouterr().err


def test_stems_that_collide_are_refused(tmp_path: Path) -> None:
    images = _images(tmp_path / "in", ["a.png", "a.jpg"])
    with pytest.raises(ValueError, match="a.jpg and a.png would both write 'a'"):
        find_images(images)

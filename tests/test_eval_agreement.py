"""biglittle-sam-eval --task agreement: masks against a reference model's on a folder, no labels.

The models are the packaged proxy teacher and student (trained, so the automatic mask generator
keeps masks); the images are the generated shapes folder of ``tests/eval_fixtures.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from segment_anything import SamAutomaticMaskGenerator

from biglittle_sam import sam_model_registry
from biglittle_sam.eval import (
    EvalSettings,
    agreement_summary,
    best_match_ious,
    grid_points,
    iou_matrix,
    mask_iou,
)
from tests.eval_helpers import REPO, read_json
from tools.eval_miou import main

ASSETS = REPO / "biglittle_sam" / "assets"
TEACHER = f"vit_tiny={ASSETS / 'proxy_teacher.pth'}"
STUDENT = f"bl_tiny={ASSETS / 'proxy_student.pth'}"
# The proxy models' predicted IoUs are lower than SAM's: upstream's 0.88 / 0.95 keep no mask.
LOW_FILTERS = ["--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8"]


def _args(images: Path, out: Path, *extra: str) -> list:
    base = ["--images", str(images), "--reference", TEACHER, "--device", "cpu"]
    return base + ["--no-progress", "--out-dir", str(out), "--limit", "3", *extra]


def _check_rows(result: dict) -> None:
    """The teacher against itself agrees fully; the student at 0.5 less, within bounds."""
    n = result["dataset"]["reference_masks"]
    assert n == len(result["masks"]["area"]) == len(result["masks"]["image_id"]) > 5
    same, student = result["models"]
    assert same["label"] == "vit_tiny" and student["label"] == "bl_tiny@0.5"
    assert result["reference"]["label"] == "reference vit_tiny"
    assert same["agreement"]["miou"]["all"] == 100.0 and same["agreement"]["share"]["all"] == 1.0
    assert result["ious"]["vit_tiny"] == [100.0] * n
    scores = student["agreement"]
    ious = result["ious"]["bl_tiny@0.5"]
    assert len(ious) == n and all(0.0 <= v <= 100.0 for v in ious)
    assert 0.0 <= scores["miou"]["all"] < 100.0
    assert scores["miou"]["all"] == pytest.approx(sum(ious) / n)
    assert 0.0 <= scores["share"]["all"] < 1.0
    assert scores["share"]["all"] == pytest.approx(np.mean(np.array(ious) >= 90.0))
    counts = scores["miou"]["count"]
    # every mask is in one size bin (two at a boundary)
    assert counts["all"] == n and counts["small"] + counts["medium"] + counts["large"] >= n


def test_grid_model_against_itself_and_a_student(
    eval_shapes, tmp_path: Path, one_thread, capsys
) -> None:
    args = _args(eval_shapes.coco_images, tmp_path, "--model", TEACHER, "--model", STUDENT + "@0.5")
    assert main(args + ["--points-per-side", "8"]) == 0  # the task follows from --reference
    result = read_json(tmp_path / "agreement_folder.json")
    assert result["task"] == "agreement" and result["dataset"]["images_evaluated"] == 3
    _check_rows(result)
    ds = result["dataset"]
    assert ds["points"] == 3 * 64 == ds["reference_masks"] + ds["reference_empty"]
    md = (tmp_path / "agreement_folder.md").read_text(encoding="utf-8")
    assert "Agreement with `reference vit_tiny`" in md and "8 x 8 point grid" in md
    assert "| vit_tiny | 1 | " in md and "| 100.00 | 100.0% |" in md
    assert "IoU ≥ 0.9" in md and "small / medium / large" in md
    assert (
        "| model | keep ratio | GMACs | encoder ms | mIoU | IoU ≥ 0.9 |" in capsys.readouterr().out
    )
    assert (tmp_path / "agreement_folder.png").read_bytes()[:4] == b"\x89PNG"


def test_amg_model_against_itself_and_a_student(eval_shapes, tmp_path: Path, one_thread) -> None:
    args = _args(eval_shapes.coco_images, tmp_path, "--task", "agreement", "--name", "amg")
    args += ["--model", TEACHER, "--model", STUDENT + "@0.5", "--agreement-prompts", "amg"]
    assert main(args + ["--points-per-side", "8", *LOW_FILTERS]) == 0
    result = read_json(tmp_path / "amg.json")
    _check_rows(result)
    same, student = result["models"]
    # the same model finds the same masks; every reference mask counts once
    assert same["agreement"]["masks"] == result["dataset"]["reference_masks"]
    assert student["agreement"]["masks"] >= 1 and "points" not in result["dataset"]
    md = (tmp_path / "amg.md").read_text(encoding="utf-8")
    assert "automatic masks, 8 points per side" in md and "| masks |" in md


def test_int8_against_fp32_on_the_same_weights(eval_shapes, tmp_path: Path, one_thread) -> None:
    spec = STUDENT + "@0.5"
    args = ["--images", str(eval_shapes.coco_images), "--reference", spec, "--model", spec]
    args += ["--int8", "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path)]
    assert main(args + ["--limit", "1", "--points-per-side", "6"]) == 0
    result = read_json(tmp_path / "agreement_folder.json")
    (row,) = result["models"]
    assert (
        row["label"] == "bl_tiny@0.5 int8"
        and result["reference"]["label"] == "reference bl_tiny@0.5"
    )
    # int8 changes some of the tiny proxy's masks, far from all (65 here, 77 on 3 images at 16)
    assert 20.0 < row["agreement"]["miou"]["all"] < 100.0


def test_grid_points_are_the_mask_generators() -> None:
    sam = sam_model_registry["vit_tiny"]()
    generator = SamAutomaticMaskGenerator(sam, points_per_side=5)
    expected = generator.point_grids[0] * np.array([[120, 96]])  # as _process_crop scales them
    assert np.array_equal(grid_points(96, 120, 5), expected)
    assert grid_points(10, 10, 1).tolist() == [[5.0, 5.0]]


def test_iou_matrix_best_match_and_summary() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((4, 9, 11)) > 0.5
    b = rng.random((3, 9, 11)) > 0.7
    b[0] = a[2]
    b[2] = False  # an empty model mask: IoU 0 with everything non-empty
    got = iou_matrix(a, b)
    assert got.shape == (4, 3)
    assert np.allclose(got, [[mask_iou(x, y) for y in b] for x in a])
    assert best_match_ious(a, b)[2] == 1.0
    assert best_match_ious(a, b[:0]).tolist() == [0.0] * 4
    assert iou_matrix(a[:0], b).shape == (0, 3)
    summary = agreement_summary(
        np.array([1.0, 0.9, 0.5, 0.95]), np.array([10, 2000, 5000, 10]), 0.9
    )
    assert summary["miou"]["all"] == pytest.approx(83.75)
    assert summary["share"] == {"all": 0.75, "small": 1.0, "medium": 0.5, "large": None}
    assert summary["miou"]["count"] == {"all": 4, "small": 2, "medium": 2, "large": 0}


def test_bad_folders_and_flags_are_usage_errors(
    eval_shapes, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here", encoding="utf-8")
    unreadable = tmp_path / "locked"
    unreadable.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    cases = [
        (empty, "no image files"),
        (unreadable, "cannot read the image folder (Permission denied)"),
        (tmp_path / "missing", "image folder not found"),
        (empty / "notes.txt", "not a folder"),
    ]
    for folder, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(_args(folder, tmp_path, "--model", TEACHER))
        err = capsys.readouterr().err
        assert stop.value.code == 2 and str(folder) in err and message in err, err
    images = str(eval_shapes.coco_images)
    flags = [
        (["--task", "agreement"], "task 'agreement' needs --reference"),
        (["--reference", TEACHER, "--iou-match", "1.5"], "--iou-match must be in (0, 1]"),
        (["--reference", TEACHER, "--points-per-side", "0"], "--points-per-side must be >= 1"),
        (["--reference", TEACHER, "--agreement-prompts", "boxes"], "invalid choice: 'boxes'"),
    ]
    for extra, message in flags:
        with pytest.raises(SystemExit) as stop:
            main(["--images", images, "--model", TEACHER, *extra])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs --reference"):
        EvalSettings(models=(TEACHER,), images=images, task="agreement").resolved()


def test_amg_scores_with_no_reference_mask() -> None:
    """An image where the reference keeps no mask (the built-in models at some filters) scores
    nothing for it instead of failing on an empty reshape."""
    from biglittle_sam.eval.agreement import _amg_scores

    class Fixed:
        def __init__(self, count: int) -> None:
            self.count = count

        def generate(self, image: np.ndarray) -> list:
            mask = np.zeros(image.shape[:2], dtype=bool)
            mask[:4, :4] = True
            return [{"segmentation": mask}] * self.count

    image = np.zeros((8, 10, 3), dtype=np.uint8)
    scores = _amg_scores(image, Fixed(0), {"a": Fixed(2)})  # type: ignore[arg-type]
    assert scores["reference_masks"] == 0 and scores["areas"] == [] and scores["ious"]["a"] == []
    assert scores["masks"] == {"a": 2}
    scores = _amg_scores(image, Fixed(1), {"a": Fixed(0)})  # type: ignore[arg-type]
    assert scores["areas"] == [16] and scores["ious"]["a"] == [0.0]

"""Mask AP from detector boxes: detections checks, COCOeval on oracle and real tiny-model masks."""

from __future__ import annotations

from pathlib import Path

import pytest

from biglittle_sam.data import DatasetError
from biglittle_sam.eval import DistContext, EvalModel, EvalSettings, ModelSpec, run_mask_ap
from biglittle_sam.eval.mask_ap import coco_mask_ap, load_detections
from tests.eval_helpers import GroundTruthPredictor, coco_dataset, read_json, write_json
from tools.eval_miou import main


def _settings(eval_shapes, detections: Path, out: Path) -> EvalSettings:
    return EvalSettings(
        annotations=str(eval_shapes.coco_annotations),
        images=str(eval_shapes.coco_images),
        detections=str(detections),
        out_dir=str(out),
        progress=False,
    ).resolved()


def test_perfect_masks_from_ground_truth_boxes_score_ap_100(eval_shapes, tmp_path: Path) -> None:
    data = read_json(eval_shapes.coco_annotations)
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in data["annotations"]
        if not a["iscrowd"]
    ]
    path = write_json(tmp_path / "dets.json", dets)
    settings = _settings(eval_shapes, path, tmp_path)
    assert settings.task == "ap"
    dataset = coco_dataset(eval_shapes, require_instances=False)
    oracle = EvalModel(
        label="oracle",
        spec=ModelSpec("oracle", None, None, "oracle"),
        predictor=GroundTruthPredictor(dataset),
        keep_ratio=1.0,
        img_size=256,
        config_name="oracle",
        gmacs=None,
    )
    result = run_mask_ap(settings, dataset, [oracle], DistContext())
    assert result is not None
    ap = result["models"][0]["mask_ap"]
    assert ap["AP"] == pytest.approx(100.0) and ap["AP50"] == pytest.approx(100.0)
    assert "Average Precision" in ap["summary"]
    assert result["models"][0]["detections_scored"] == len(dets)


def test_tiny_model_mask_ap_through_the_cli(
    eval_shapes, tmp_path: Path, one_thread, capsys
) -> None:
    args = ["--task", "ap", "--annotations", str(eval_shapes.coco_annotations)]
    args += ["--images", str(eval_shapes.coco_images), "--detections", str(eval_shapes.detections)]
    args += ["--model", "vit_tiny", "--model", "bl_tiny@0.5", "--device", "cpu", "--no-progress"]
    args += ["--out-dir", str(tmp_path), "--save-masks"]
    assert main(args) == 0
    assert "### Mask AP on coco" in capsys.readouterr().out
    result = read_json(tmp_path / "ap_coco.json")
    assert result["dataset"]["images_scored"] == 5
    for m in result["models"]:
        ap = m["mask_ap"]
        assert set(ap) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}
        assert 0.0 <= ap["AP"] <= 100.0
        saved = read_json(Path(result["settings"]["saved_masks"][m["label"]]))
        assert len(saved) == m["detections_scored"] > 0
        assert isinstance(saved[0]["segmentation"]["counts"], str)
    assert (tmp_path / "ap_coco.png").is_file()


def test_detections_are_checked_against_the_annotations(eval_shapes, tmp_path: Path) -> None:
    dataset = coco_dataset(eval_shapes, require_instances=False)
    good = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    cases = [
        ({"not": "a list"}, "expected a JSON list of {image_id"),
        ([dict(good, image_id=77)], r"\[0\]: image_id 77 is not an image of"),
        ([good, dict(good, category_id=999)], r"\[1\]: category_id 999 is not a category"),
        ([dict(good, bbox=[1, 2, -3, 4])], r"'bbox' must be \[x, y, w, h\]"),
        ([dict(good, score="high")], "'score' must be a number"),
        ([dict(good, bbox=[1, float("nan"), 3, 4])], "'bbox' must be .* of finite numbers"),
        ([dict(good, bbox=[float("inf"), 2, 3, 4])], "'bbox' must be .* of finite numbers"),
        ([dict(good, score=float("nan"))], r"'score' must be a number \(finite\)"),
    ]
    for payload, message in cases:
        path = write_json(tmp_path / "dets.json", payload)
        with pytest.raises(DatasetError, match=message) as info:
            load_detections(path, dataset)
        assert str(path) in str(info.value)
    many = [dict(good, score=s / 10) for s in range(10)]
    grouped = load_detections(write_json(tmp_path / "many.json", many), dataset, max_per_image=3)
    assert [d["score"] for d in grouped[1]] == [0.9, 0.8, 0.7]


def test_no_results_scores_zero_and_no_images_is_an_error(eval_shapes) -> None:
    api = coco_dataset(eval_shapes).to_coco_api()
    assert coco_mask_ap(api, [], [1, 2])["AP"] == 0.0
    with pytest.raises(DatasetError, match="no image could be evaluated"):
        coco_mask_ap(api, [], [])

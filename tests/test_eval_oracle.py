"""Oracle models: ground-truth masks score 100, empty masks score 0, on every prompt setting."""

from __future__ import annotations

import numpy as np
import pytest

from biglittle_sam.data import LvisDataset, SA1BDataset
from biglittle_sam.eval import (
    DistContext,
    EvalModel,
    EvalSettings,
    ModelSpec,
    PromptSettings,
    evaluate_image,
    run_miou,
)
from tests.eval_helpers import GroundTruthPredictor, coco_dataset, read_json


def _oracle_model(dataset, empty: bool = False) -> EvalModel:
    return EvalModel(
        label="empty" if empty else "ground truth",
        spec=ModelSpec("oracle", None, None, "oracle"),
        predictor=GroundTruthPredictor(dataset, empty=empty),
        keep_ratio=1.0,
        img_size=256,
        config_name="oracle",
        gmacs=None,
    )


@pytest.mark.parametrize("protocol", ["evit", "edgesam"])
def test_ground_truth_scores_100_and_empty_scores_0(eval_shapes, protocol: str) -> None:
    dataset = coco_dataset(eval_shapes)
    settings = PromptSettings(protocol=protocol, clicks=(1, 2, 3))
    for empty, expected in ((False, 100.0), (True, 0.0)):
        oracle = GroundTruthPredictor(dataset, empty=empty)
        for i in range(len(dataset)):
            record = dataset.record(i)
            oracle.set_image(dataset.load_image(record))
            ious = evaluate_image(oracle, record, settings)
            assert set(ious) == {"box", "click1", "click2", "click3"}
            for values in ious.values():
                np.testing.assert_array_equal(values, expected)


def test_oracle_run_summaries_on_coco(eval_shapes) -> None:
    settings = EvalSettings(
        annotations=str(eval_shapes.coco_annotations),
        images=str(eval_shapes.coco_images),
        progress=False,
    ).resolved()
    dataset = coco_dataset(eval_shapes)
    models = [_oracle_model(dataset), _oracle_model(dataset, empty=True)]
    result = run_miou(settings, dataset, models, DistContext())
    assert result is not None
    good, empty = result["models"]
    n = result["dataset"]["instances"]
    assert n == sum(len(dataset.record(i).instances) for i in range(len(dataset)))
    for name in ("box", "click1", "click3", "click5"):
        assert good["miou"][name]["all"] == 100.0 and empty["miou"][name]["all"] == 0.0
        assert good["miou"][name]["count"]["all"] == n
        for size in ("small", "medium"):
            assert good["miou"][name][size] == 100.0
        assert len(result["ious"]["ground truth"][name]) == n
    assert result["instances"]["iscrowd"].count(1) > 0  # evit keeps crowd regions


def test_oracle_on_sa1b_with_sampling(eval_shapes) -> None:
    dataset = SA1BDataset(eval_shapes.sa1b_dir, instances_per_image=3, seed=1)
    settings = EvalSettings(
        images=str(eval_shapes.sa1b_dir), protocol="edgesam", prompts=("click",), progress=False
    ).resolved()
    assert settings.dataset == "sa1b"
    result = run_miou(settings, dataset, [_oracle_model(dataset)], DistContext())
    assert result is not None
    assert result["models"][0]["miou"]["click5"]["all"] == 100.0
    assert result["dataset"]["instances"] <= 3 * len(dataset)
    assert result["dataset"]["skipped_annotations"]["not_sampled"] > 0


def test_oracle_on_lvis(eval_shapes) -> None:
    dataset = LvisDataset(eval_shapes.lvis_annotations, eval_shapes.lvis_image_root)
    settings = EvalSettings(
        annotations=str(eval_shapes.lvis_annotations),
        images=str(eval_shapes.lvis_image_root),
        prompts=("box",),
        progress=False,
    ).resolved()
    assert settings.dataset == "lvis"
    result = run_miou(settings, dataset, [_oracle_model(dataset)], DistContext())
    assert result is not None
    assert result["models"][0]["miou"]["box"]["all"] == 100.0
    assert result["dataset"]["instances"] == len(
        read_json(eval_shapes.lvis_annotations)["annotations"]
    )

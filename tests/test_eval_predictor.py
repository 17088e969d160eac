"""The batched SAM predictor agrees with SamPredictor.predict, and model specs parse and build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from biglittle_sam import get_keep_ratio, sam_model_registry, save_model_checkpoint
from biglittle_sam.build_sam import is_official_sam_checkpoint as _uses_sam_checkpoint
from biglittle_sam.eval import (
    ModelSpecError,
    PromptBatch,
    PromptSettings,
    SamMaskPredictor,
    build_eval_models,
    evaluate_image,
    parse_model_spec,
)
from tests.eval_helpers import coco_dataset


@pytest.fixture(scope="module")
def random_vit_tiny() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return sam_model_registry["vit_tiny"]()


def test_batched_prompts_match_sam_predictor(random_vit_tiny, one_thread) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    ours = SamMaskPredictor(
        random_vit_tiny, max_mask_pixels=2 * 3 * 90 * 130
    )  # 2 prompts per chunk
    ours.set_image(image)
    reference = SamPredictor(random_vit_tiny)
    reference.set_image(image)
    boxes = np.array([[5, 5, 60, 40], [30, 10, 120, 85], [0, 0, 129, 89], [70, 50, 90, 70.5]])
    points = rng.integers(0, 90, size=(4, 3, 2)).astype(np.float64)
    labels = np.array([[1, 0, 1], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    for choice in ("best", "single"):
        masks, scores = ours.predict(PromptBatch(1, [0, 1, 2, 3], boxes=boxes), choice)
        masks_p, scores_p = ours.predict(
            PromptBatch(1, [0, 1, 2, 3], point_coords=points, point_labels=labels), choice
        )
        for j in range(4):
            for got, got_score, kwargs in (
                (masks[j], scores[j], {"box": boxes[j]}),
                (masks_p[j], scores_p[j], {"point_coords": points[j], "point_labels": labels[j]}),
            ):
                ref, ref_scores, _ = reference.predict(multimask_output=choice == "best", **kwargs)
                k = int(np.argmax(ref_scores))
                assert got_score == pytest.approx(float(ref_scores[k]), abs=1e-4)
                assert np.mean(got != ref[k]) < 1e-3  # batching may flip a pixel at logit ~0
    empty, _ = ours.predict(PromptBatch(1, []), "best")
    assert empty.shape == (0, 90, 130)
    with pytest.raises(ValueError, match="mask_choice"):
        ours.predict(PromptBatch(1, [0], boxes=boxes[:1]), "largest")
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        ours.set_image(image.astype(np.float32))


def test_encoding_is_timed_and_evaluation_is_repeatable(
    eval_shapes, random_vit_tiny, one_thread
) -> None:
    dataset = coco_dataset(eval_shapes)
    record = dataset.record(1)
    image = dataset.load_image(record)
    predictor = SamMaskPredictor(random_vit_tiny)
    settings = PromptSettings(protocol="edgesam", clicks=(1, 3))
    assert predictor.set_image(image) > 0
    first = evaluate_image(predictor, record, settings)
    assert predictor.set_image(image) > 0
    second = evaluate_image(predictor, record, settings)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
        assert first[k].shape == (len(record.instances),)
        assert ((first[k] >= 0) & (first[k] <= 100)).all()


@pytest.mark.parametrize(
    "text, name, path, ratio",
    [
        ("vit_b=sam_vit_b_01ec64.pth", "vit_b", "sam_vit_b_01ec64.pth", None),
        ("bl_b=ckpt/bl_b.pth@0.25", "bl_b", "ckpt/bl_b.pth", 0.25),
        ("bl_tiny@0.5", "bl_tiny", None, 0.5),
        ("vit_tiny", "vit_tiny", None, None),
        ("bl_b=runs/v2@final/model.pth@1", "bl_b", "runs/v2@final/model.pth", 1.0),
        ("bl_b=runs/v2@final.pth", "bl_b", "runs/v2@final.pth", None),
    ],
)
def test_model_specs_parse(text: str, name: str, path, ratio) -> None:
    spec = parse_model_spec(text)
    assert (spec.name, spec.checkpoint, spec.keep_ratio) == (name, path, ratio)


@pytest.mark.parametrize(
    "text, message",
    [
        ("bl_b=", "cannot parse model spec"),
        ("=x.pth", "cannot parse model spec"),
        ("bl_tiny@", "not a number in"),
        ("bl_tiny@1.5", "not a number in"),
        ("vit_q=x.pth", "unknown model 'vit_q'"),
        ("vit_tiny@0.5", "plain SAM and has no keep ratio below 1"),
    ],
)
def test_bad_model_specs_show_the_expected_form(text: str, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message) as info:
        parse_model_spec(text)
    if "plain SAM" not in message:
        assert "NAME[=CHECKPOINT][@KEEP_RATIO]" in str(info.value)


def test_build_models_from_checkpoints(tiny_sam_checkpoint: Path, tmp_path: Path) -> None:
    assert _uses_sam_checkpoint(str(tiny_sam_checkpoint))
    bl = sam_model_registry["bl_tiny"](
        sam_checkpoint=tiny_sam_checkpoint, keep_ratio=0.5, training_free=False
    )
    full = tmp_path / "bl_tiny.pth"
    from biglittle_sam import model_config

    save_model_checkpoint(full, bl, model_config(bl), teacher="vit_tiny")
    assert not _uses_sam_checkpoint(str(full))
    specs = [
        f"vit_tiny={tiny_sam_checkpoint}",
        f"bl_tiny={tiny_sam_checkpoint}@0.5",  # the SAM file alone: the training-free mode
        f"bl_tiny={tiny_sam_checkpoint}@0.25",  # shares the module above
        f"bl_tiny={full}@0.5",  # a full big.LITTLE checkpoint
    ]
    models = build_eval_models(specs, torch.device("cpu"))
    assert [m.keep_ratio for m in models] == [1.0, 0.5, 0.25, 0.5]
    assert models[1].predictor.sam is models[2].predictor.sam
    assert models[0].predictor.sam is not models[1].predictor.sam
    assert len({m.label for m in models}) == 4
    assert all(m.gmacs is not None and m.gmacs > 0 for m in models)
    assert models[2].gmacs < models[1].gmacs
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    shared = models[2].predictor.sam
    seen: list = []  # the ratio each encoder pass ran at (per call: the model's own is unchanged)
    shared.image_encoder.register_forward_pre_hook(lambda m, a: seen.append(get_keep_ratio(m)))
    models[2].predictor.set_image(image)
    assert seen == [0.25]
    models[1].predictor.set_image(image)
    assert seen == [0.25, 0.5]
    # Bare names get the same seeded random weights in every process.
    a, b = build_eval_models(["vit_tiny"], torch.device("cpu")) + build_eval_models(
        ["vit_tiny"], torch.device("cpu")
    )
    for pa, pb in zip(a.predictor.sam.parameters(), b.predictor.sam.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ModelSpecError, match="not found"):
        build_eval_models([f"vit_tiny={tmp_path / 'missing.pth'}"], torch.device("cpu"))

"""The drop-in promise: segment_anything's predictor and mask generator take the model unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from biglittle_sam import set_keep_ratio


@pytest.mark.parametrize("keep_ratio", [1.0, 0.25])
def test_predictor_points_and_box(tiny_bl, keep_ratio: float) -> None:
    set_keep_ratio(tiny_bl, keep_ratio)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(90, 160, 3), dtype=np.uint8)
    predictor = SamPredictor(tiny_bl)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(
        point_coords=np.array([[40, 30], [100, 60]]), point_labels=np.array([1, 0])
    )
    assert masks.shape == (3, 90, 160) and masks.dtype == bool
    assert scores.shape == (3,) and logits.shape == (3, 64, 64)
    masks, _, _ = predictor.predict(box=np.array([10, 10, 80, 70]), multimask_output=False)
    assert masks.shape == (1, 90, 160)


def test_automatic_mask_generator(tiny_bl) -> None:
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    image[10:40, 20:60] = 255
    generator = SamAutomaticMaskGenerator(
        tiny_bl, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    records = generator.generate(image)
    assert isinstance(records, list)
    for r in records:
        assert r["segmentation"].shape == (64, 96)

"""IoU and mIoU: agreement with pycocotools, size bins at their boundaries, summaries."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from biglittle_sam.eval.metrics import area_bins, batch_iou, mask_iou, summarize_ious


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_iou_agrees_with_pycocotools_on_rles() -> None:
    rng = np.random.default_rng(0)
    for k in range(40):
        h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        gt = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        pred = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        if k == 0:
            pred[:] = False  # an empty prediction
        if k == 1:
            pred = gt.copy()  # a perfect one
        if k == 2:
            pred[:] = False
            gt[:] = False  # both empty: pycocotools says 0
        reference = mask_utils.iou([_rle(pred)], [_rle(gt)], [0])
        assert mask_iou(pred, gt) == pytest.approx(float(reference[0][0]), abs=1e-12)


def test_batch_iou_matches_pycocotools_matrix_diagonal() -> None:
    rng = np.random.default_rng(1)
    pred = rng.random((6, 17, 23)) < 0.4
    gt = rng.random((6, 17, 23)) < 0.6
    reference = mask_utils.iou([_rle(p) for p in pred], [_rle(g) for g in gt], [0] * 6)
    np.testing.assert_allclose(batch_iou(pred, gt), np.diag(reference), atol=1e-12)
    assert mask_iou(pred[0], pred[0]) == 1.0


def test_iou_rejects_masks_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


@pytest.mark.parametrize(
    "area, bins",
    [
        (0.5, ["small"]),
        (1023.9, ["small"]),
        (1024.0, ["small", "medium"]),  # COCOeval's areaRng ends are inclusive
        (1024.1, ["medium"]),
        (9215.5, ["medium"]),
        (9216.0, ["medium", "large"]),
        (9216.5, ["large"]),
        (1e7, ["large"]),
    ],
)
def test_size_bins_at_boundaries(area: float, bins: list) -> None:
    assert area_bins(area) == bins


def test_summary_is_plain_mean_per_bin() -> None:
    ious = [100.0, 50.0, 0.0, 30.0, 80.0]
    areas = [10.0, 1024.0, 5000.0, 9216.0, 20000.0]
    s = summarize_ious(ious, areas)
    assert s["all"] == pytest.approx(52.0)
    assert s["small"] == pytest.approx(75.0)  # 100 and the boundary 50
    assert s["medium"] == pytest.approx((50.0 + 0.0 + 30.0) / 3)
    assert s["large"] == pytest.approx(55.0)
    assert s["count"] == {"all": 5, "small": 2, "medium": 3, "large": 2}


def test_summary_of_an_empty_bin_is_none() -> None:
    s = summarize_ious([40.0], [5.0])
    assert s["large"] is None and s["medium"] is None
    assert s["count"]["large"] == 0
    with pytest.raises(ValueError, match="IoUs but"):
        summarize_ious([1.0, 2.0], [3.0])

"""Box and click prompts: interior-most first clicks, error-region clicks, both protocols."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest

from biglittle_sam.eval.prompts import (
    Click,
    ClickSession,
    box_xywh_to_xyxy,
    distance_transform,
    edgesam_click,
    evit_click,
    instance_rng,
    interior_point,
    squared_distance_transform,
)


def _exact_sq_dt(mask: np.ndarray) -> np.ndarray:
    """Brute-force squared distance of every pixel to the nearest pixel outside the mask, the
    image border counting as outside (exact integers, no OpenCV)."""
    padded = np.pad(mask, 1)
    zeros = np.argwhere(~padded)  # (k, 2)
    out = np.zeros(padded.shape, dtype=np.int64)
    ones = np.argwhere(padded)  # (m, 2)
    for start in range(0, len(ones), 256):
        o = ones[start : start + 256]
        d2 = ((o[:, None, :] - zeros[None, :, :]) ** 2).sum(-1)  # (m', k)
        out[o[:, 0], o[:, 1]] = d2.min(axis=1)
    return out[1:-1, 1:-1]


def _reference_click(
    gt: np.ndarray, pred: np.ndarray, clicked: Sequence[Tuple[int, int]] = ()
) -> Optional[Tuple[int, int, bool]]:
    """The RITM clicker written out with exact distances: (x, y, positive), None without error."""
    not_clicked = np.ones_like(gt, dtype=bool)
    for y, x in clicked:
        not_clicked[y, x] = False
    fn_dt = _exact_sq_dt(gt & ~pred) * not_clicked
    fp_dt = _exact_sq_dt(~gt & pred) * not_clicked
    if fn_dt.max() == 0 and fp_dt.max() == 0:
        return None
    positive = bool(fn_dt.max() > fp_dt.max())
    dt = fn_dt if positive else fp_dt
    ys, xs = np.where(dt == dt.max())
    return int(xs[0]), int(ys[0]), positive


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(1, w // 2 + 1)), int(rng.integers(1, h // 2 + 1)))
        cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def test_box_prompt_is_xyxy() -> None:
    np.testing.assert_array_equal(box_xywh_to_xyxy([10, 20, 5.5, 7]), [10, 20, 15.5, 27])
    with pytest.raises(ValueError, match=r"\[x, y, w, h\]"):
        box_xywh_to_xyxy([1, 2, 3])


def test_first_click_is_inside_at_a_distance_transform_maximum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = int(rng.integers(8, 70)), int(rng.integers(8, 70))
        gt = _blob(rng, h, w)
        click = evit_click(gt, None)
        assert click is not None and click.positive
        assert gt[click.y, click.x]
        dt = distance_transform(gt)
        assert dt[click.y, click.x] == pytest.approx(dt.max(), abs=1e-4)
        assert squared_distance_transform(gt)[click.y, click.x] == _exact_sq_dt(gt).max()
        assert (click.x, click.y, True) == _reference_click(gt, np.zeros_like(gt))
        assert interior_point(gt) == (click.x, click.y)


def test_squared_distances_are_exact_and_repeatable() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        mask = _blob(rng, int(rng.integers(8, 60)), int(rng.integers(8, 60)))
        exact = _exact_sq_dt(mask)
        for _ in range(3):  # OpenCV's float output varies between calls; the squares do not
            np.testing.assert_array_equal(squared_distance_transform(mask), exact)


def test_one_pixel_object_and_border_objects() -> None:
    pixel = np.zeros((9, 7), bool)
    pixel[4, 0] = True  # on the left border too
    assert evit_click(pixel, None) == Click(x=0, y=4, positive=True)
    # A strip along the top edge: the padding makes the border a boundary, so the click lands
    # in the middle row of the strip, not on the edge.
    strip = np.zeros((20, 30), bool)
    strip[:5, :] = True
    click = evit_click(strip, None)
    assert click is not None and click.y == 2
    assert (click.x, click.y, True) == _reference_click(strip, np.zeros_like(strip))
    # The whole image as one object: the centre.
    full = np.ones((5, 5), bool)
    assert evit_click(full, None) == Click(x=2, y=2, positive=True)
    corner = np.zeros((12, 12), bool)
    corner[8:, 8:] = True
    click = evit_click(corner, None)
    assert click is not None and corner[click.y, click.x]


def test_later_clicks_match_the_reference_and_lie_in_the_region_they_claim() -> None:
    rng = np.random.default_rng(1)
    positives = negatives = 0
    for _ in range(60):
        h, w = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        gt, pred = _blob(rng, h, w), _blob(rng, h, w)
        clicked = [(int(rng.integers(h)), int(rng.integers(w))) for _ in range(3)]
        click = evit_click(gt, pred, clicked)
        expected = _reference_click(gt, pred, clicked)
        if expected is None:
            assert click is None
            continue
        assert click is not None and (click.x, click.y, click.positive) == expected
        assert (click.y, click.x) not in clicked
        if click.positive:
            positives += 1
            assert gt[click.y, click.x] and not pred[click.y, click.x]  # a false negative
            assert click.label == 1
        else:
            negatives += 1
            assert pred[click.y, click.x] and not gt[click.y, click.x]  # a false positive
            assert click.label == 0
    assert positives > 5 and negatives > 5


def test_larger_error_region_wins_and_a_tie_goes_negative() -> None:
    gt = np.zeros((30, 30), bool)
    gt[2:12, 2:12] = True  # all missed: FN of depth 5
    pred = np.zeros((30, 30), bool)
    pred[20:24, 20:24] = True  # FP of depth 2
    assert evit_click(gt, pred) == Click(x=6, y=6, positive=True)
    pred[14:30, 14:30] = True  # now the FP region is deeper
    click = evit_click(gt, pred)
    assert click is not None and not click.positive
    tie_gt = np.zeros((10, 20), bool)
    tie_gt[2:5, 2:5] = True
    tie_pred = np.zeros((10, 20), bool)
    tie_pred[2:5, 12:15] = True
    assert evit_click(tie_gt, tie_pred) == Click(x=13, y=3, positive=False)


def test_no_click_without_error() -> None:
    gt = np.zeros((8, 8), bool)
    gt[2:6, 2:6] = True
    assert evit_click(gt, gt.copy()) is None
    assert edgesam_click(gt, gt.copy(), np.random.default_rng(0)) is None
    session = ClickSession(gt)
    assert session.add_click(None)
    assert not session.add_click(gt.copy())
    assert session.coords.shape == (1, 2) and session.labels.tolist() == [1]


def test_edgesam_clicks_are_random_error_pixels_with_the_right_label() -> None:
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(40):
        gt, pred = _blob(rng, 40, 50), _blob(rng, 40, 50)
        gen = np.random.default_rng(int(rng.integers(1 << 30)))
        click = edgesam_click(gt, pred, gen)
        if not (gt ^ pred).any():
            assert click is None
            continue
        assert click is not None
        assert gt[click.y, click.x] != pred[click.y, click.x]  # in the error region
        assert click.positive == bool(gt[click.y, click.x])
        seen.add(click.positive)
    assert seen == {True, False}


def test_random_clicks_are_seeded_per_instance() -> None:
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = np.zeros((40, 40), bool)
    pred[0:20, 0:40] = True

    def clicks(seed: int, image_id: object, ann_id: object) -> list:
        session = ClickSession(gt, "edgesam", instance_rng(seed, image_id, ann_id))
        session.add_click(None)
        for _ in range(4):
            session.add_click(pred)
        return session.clicks

    first = clicks(0, 7, 70)
    assert first[0] == evit_click(gt, None)  # EdgeSAM's first click is the centre point too
    assert clicks(0, 7, 70) == first  # same instance: same clicks, whatever ran before
    assert clicks(0, 7, 71) != first  # another annotation
    assert clicks(1, 7, 70) != first  # another seed
    assert clicks(0, "sa_7", "x") == clicks(0, "sa_7", "x")  # string ids hash stably
    a = instance_rng(0, 7, 70).integers(1 << 30, size=4)
    b = instance_rng(0, 7, 70).integers(1 << 30, size=4)
    np.testing.assert_array_equal(a, b)


def test_session_feeds_every_click_again() -> None:
    gt = np.zeros((30, 30), bool)
    gt[3:27, 3:27] = True
    session = ClickSession(gt, "evit")
    assert session.add_click(None)
    pred = np.zeros_like(gt)
    pred[3:27, 3:15] = True  # right half missed
    assert session.add_click(pred)
    assert session.coords.shape == (2, 2)
    assert session.labels.tolist() == [1, 1]
    assert gt[int(session.coords[1, 1]), int(session.coords[1, 0])]
    with pytest.raises(ValueError, match="unknown click protocol"):
        ClickSession(gt, "ritm")
    with pytest.raises(ValueError, match="needs the instance's rng"):
        ClickSession(gt, "edgesam")

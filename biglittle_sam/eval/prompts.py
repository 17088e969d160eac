"""Prompts made from ground truth: boxes, and clicks under the two published protocols.

``evit`` (EfficientViT-SAM, the RITM clicker; the default):
  - click 1 is the ground-truth pixel farthest from the mask boundary: the argmax of the L2 distance
    transform of the mask padded by one zero pixel, so the image border counts as boundary;
  - click k > 1: false negatives FN = GT and not pred, false positives FP = pred and not GT. The
    region whose distance-transform maximum is larger gets the click, at that maximum: positive in
    FN, negative in FP (a tie goes to FP, as in the reference). Pixels clicked before are not
    clicked again.

``edgesam``: click 1 as above (EdgeSAM's "center point"); click k > 1 is a pixel drawn uniformly
at random from the error region FN or FP, positive when it lies in FN. The draw comes from a
generator seeded by (seed, image id, annotation id), so it is the same in every process, every run
and for every model.

Distances are compared exactly (integer squared distances, see
:func:`squared_distance_transform`); ties between equal maxima go to the first pixel in row-major
order (``np.where(...)[0]`` in the reference). When the prediction has no error left, no click is
added (the reference would add a negative click at pixel (0, 0)); the instance keeps its perfect
mask for the remaining rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..data.records import stable_key

__all__ = [
    "PROTOCOLS",
    "Click",
    "ClickSession",
    "box_xywh_to_xyxy",
    "distance_transform",
    "squared_distance_transform",
    "interior_point",
    "evit_click",
    "edgesam_click",
    "instance_rng",
]

PROTOCOLS = ("evit", "edgesam")


@dataclass(frozen=True)
class Click:
    """One click: pixel column ``x``, row ``y`` (in the original image) and its label."""

    x: int
    y: int
    positive: bool

    @property
    def label(self) -> int:
        """SAM's point label: 1 foreground, 0 background."""
        return 1 if self.positive else 0


def box_xywh_to_xyxy(bbox: Sequence[float]) -> np.ndarray:
    """COCO's [x, y, w, h] as SAM's [x0, y0, x1, y1] (float64, shape (4,))."""
    if len(bbox) != 4:
        raise ValueError(f"a box must be [x, y, w, h], got {list(bbox)}")
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def distance_transform(mask: np.ndarray) -> np.ndarray:
    """L2 distance from each pixel of ``mask`` to the nearest pixel outside it.

    The mask is padded by one zero pixel first, so the image border counts as outside. Computed
    with OpenCV's exact (``DIST_MASK_PRECISE``) transform in float32.

    Arguments:
      mask: H x W bool.

    Returns:
      H x W float32; 0 outside the mask.
    """
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


def squared_distance_transform(mask: np.ndarray) -> np.ndarray:
    """:func:`distance_transform` squared and rounded: exact integer squared distances.

    Every true distance is the square root of an integer. OpenCV's float32 results carry rounding
    noise that differs between calls (pixels at the same distance can come out one ulp apart, so
    the "first maximum" would move from run to run); the rounded squares are exact for any image
    below about 4000 px on a side, which makes maxima and their ties exact and deterministic.

    Returns:
      H x W int64.
    """
    dist = distance_transform(mask).astype(np.float64)
    return np.rint(dist * dist).astype(np.int64)


def _region_max(
    region: np.ndarray, clicked: Sequence[Tuple[int, int]]
) -> Tuple[int, Optional[Tuple[int, int]]]:
    """Largest squared distance inside ``region`` (H x W bool) outside ``clicked`` (y, x) pixels.

    Returns:
      (max squared distance, (y, x) of the first pixel reaching it in row-major order), or
      (0, None) when the region is empty or fully clicked.
    """
    if not region.any():
        return 0, None
    dist = squared_distance_transform(region)  # (H, W)
    for y, x in clicked:
        dist[y, x] = 0
    flat = int(np.argmax(dist))
    best = int(dist.flat[flat])
    if best <= 0:
        return 0, None
    y, x = divmod(flat, dist.shape[1])
    return best, (y, x)


def interior_point(mask: np.ndarray) -> Optional[Tuple[int, int]]:
    """(x, y) of the pixel of ``mask`` farthest from its boundary (the first click), or None."""
    _, where = _region_max(mask, ())
    return None if where is None else (where[1], where[0])


def evit_click(
    gt: np.ndarray, pred: Optional[np.ndarray], clicked: Sequence[Tuple[int, int]] = ()
) -> Optional[Click]:
    """The next click of the EfficientViT-SAM / RITM protocol.

    Arguments:
      gt: H x W bool ground truth.
      pred: H x W bool current prediction, or None before the first click.
      clicked: (y, x) pixels clicked before; they are not clicked again.

    Returns:
      The click, or None when the prediction has no error left.
    """
    fn = gt if pred is None else gt & ~pred
    fn_max, fn_at = _region_max(fn, clicked)
    fp_max, fp_at = (0, None) if pred is None else _region_max(pred & ~gt, clicked)
    if fn_at is not None and fn_max > fp_max:
        return Click(x=fn_at[1], y=fn_at[0], positive=True)
    if fp_at is not None:
        return Click(x=fp_at[1], y=fp_at[0], positive=False)
    return None


def edgesam_click(gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> Optional[Click]:
    """A refinement click of the EdgeSAM protocol: uniform over the error pixels (FN or FP).

    Arguments:
      gt, pred: H x W bool.
      rng: the instance's generator (:func:`instance_rng`).

    Returns:
      The click (positive when the pixel is a false negative), or None when there is no error.
    """
    ys, xs = np.nonzero(gt ^ pred)  # row-major order
    if ys.size == 0:
        return None
    k = int(rng.integers(ys.size))
    y, x = int(ys[k]), int(xs[k])
    return Click(x=x, y=y, positive=bool(gt[y, x]))


def instance_rng(seed: int, image_id: Any, ann_id: Any) -> np.random.Generator:
    """The random generator of one instance, seeded by (seed, image id, annotation id) only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stable_key(image_id), stable_key(ann_id)])


class ClickSession:
    """The clicks on one instance, round by round.

    ``add_click(pred)`` makes the next click from the current prediction (``None`` before the first
    one) and returns False when no click is needed any more (no error left). ``coords`` (K x 2,
    x/y) and ``labels`` (K) are fed to SAM in full every round, without the previous mask.
    """

    def __init__(
        self, gt: np.ndarray, protocol: str = "evit", rng: Optional[np.random.Generator] = None
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown click protocol {protocol!r}; expected one of {PROTOCOLS}")
        if protocol == "edgesam" and rng is None:
            raise ValueError("the edgesam protocol needs the instance's rng (instance_rng(...))")
        self.gt = gt
        self.protocol = protocol
        self.rng = rng
        self.clicks: List[Click] = []

    def add_click(self, pred: Optional[np.ndarray]) -> bool:
        if self.clicks and pred is None:
            raise ValueError("clicks after the first need the current prediction")
        if self.clicks and self.protocol == "edgesam" and pred is not None and self.rng is not None:
            click = edgesam_click(self.gt, pred, self.rng)
        else:
            clicked = [(c.y, c.x) for c in self.clicks]
            click = evit_click(self.gt, pred if self.clicks else None, clicked)
        if click is None:
            return False
        self.clicks.append(click)
        return True

    @property
    def coords(self) -> np.ndarray:
        """K x 2 float64 (x, y) pixel coordinates in the original image."""
        return np.array([[c.x, c.y] for c in self.clicks], dtype=np.float64).reshape(-1, 2)

    @property
    def labels(self) -> np.ndarray:
        """K int64 labels (1 positive, 0 negative)."""
        return np.array([c.label for c in self.clicks], dtype=np.int64)

"""Mask scores: per-instance IoU and mIoU split by object size.

IoU = |pred and gt| / |pred or gt|, and 0 when both masks are empty, as ``pycocotools.mask.iou``
computes it for non-crowd objects. mIoU is the plain mean of per-instance IoU x 100.

Size bins follow COCO's ``areaRng`` on the annotation's ``area`` field: small [0, 32^2], medium
[32^2, 96^2], large [96^2, inf). Like ``COCOeval`` and the EfficientViT-SAM evaluation code, the
ends are inclusive, so an object of area exactly 32^2 (or 96^2) counts in both neighbouring bins.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = [
    "AREA_BINS",
    "BIN_NAMES",
    "mask_iou",
    "batch_iou",
    "area_bins",
    "bin_masks",
    "summarize_ious",
]

AREA_BINS: Dict[str, Tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}
BIN_NAMES = ("all", "small", "medium", "large")


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two H x W bool masks, in [0, 1] (0 when both are empty)."""
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    union = int(np.count_nonzero(pred | gt))
    return 0.0 if union == 0 else int(np.count_nonzero(pred & gt)) / union


def batch_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of B pairs of masks.

    Arguments:
      pred, gt: B x H x W bool.

    Returns:
      (B,) float64 in [0, 1].
    """
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    b = pred.shape[0]
    inter = np.count_nonzero((pred & gt).reshape(b, -1), axis=1)
    union = np.count_nonzero((pred | gt).reshape(b, -1), axis=1)
    out = np.zeros(b, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def area_bins(area: float) -> List[str]:
    """The size bins an object of annotation ``area`` belongs to (one, or two at a boundary)."""
    return [name for name, (lo, hi) in AREA_BINS.items() if lo <= area <= hi]


def bin_masks(areas: np.ndarray) -> Dict[str, np.ndarray]:
    """For (N,) areas, an (N,) bool membership array per bin name, ``all`` included."""
    areas = np.asarray(areas, dtype=np.float64)
    out = {"all": np.ones(areas.shape, dtype=bool)}
    for name, (lo, hi) in AREA_BINS.items():
        out[name] = (areas >= lo) & (areas <= hi)
    return out


def summarize_ious(ious: Sequence[float], areas: Sequence[float]) -> Dict[str, object]:
    """mIoU over all instances and per size bin.

    Arguments:
      ious: (N,) per-instance IoU x 100.
      areas: (N,) annotation areas.

    Returns:
      ``{"all": m, "small": m, "medium": m, "large": m, "count": {bin: n}}``; the mean of an empty
      bin is None.
    """
    values = np.asarray(ious, dtype=np.float64)
    a = np.asarray(areas, dtype=np.float64)
    if values.shape != a.shape:
        raise ValueError(f"{values.shape[0]} IoUs but {a.shape[0]} areas")
    out: Dict[str, object] = {}
    counts: Dict[str, int] = {}
    for name, member in bin_masks(a).items():
        n = int(member.sum())
        counts[name] = n
        out[name] = float(values[member].mean()) if n else None
    out["count"] = counts
    return out

"""The proxy benchmark's images: synthetic shapes that, like photographs, are mostly background.

The shapes generator (:mod:`biglittle_sam.data.shapes`) without its large central backdrop shape:
a few objects cover a minority of each image, the rest is textured background (noise, stripes, a
checkerboard or a gradient, seeded per image). Object sides are log-uniform between a few pixels
and half the image, so SAM's small / medium / large bins are all populated **relative to the
image**: COCO's bins are 32^2 and 96^2 px of a 640 x 480 photo, i.e. 1/300 and 3/100 of its area
(:data:`RELATIVE_BINS`). The COCO-format output is the shapes writer's, so every eval tool reads it.

Each split (train, dev, test) is drawn from its own seed (:func:`~.settings.split_seeds`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from biglittle_sam.data.shapes import ShapesDataset, background_shapes_config, make_shapes_dataset
from biglittle_sam.data.shapes_render import TOKEN_BINS

__all__ = [
    "RELATIVE_BINS",
    "bin_labels",
    "image_areas",
    "object_share",
    "relative_bin",
    "token_bins",
    "make_proxy_split",
]

# COCO's small / medium upper bounds as a share of a 640 x 480 image's area.
_COCO_AREA = 640.0 * 480.0
RELATIVE_BINS: Dict[str, Tuple[float, float]] = {
    "small": (0.0, 32.0**2 / _COCO_AREA),
    "medium": (32.0**2 / _COCO_AREA, 96.0**2 / _COCO_AREA),
    "large": (96.0**2 / _COCO_AREA, float("inf")),
}


def relative_bin(area: float, image_area: float) -> str:
    """``"small"``, ``"medium"`` or ``"large"`` for an object of ``area`` px in an image of
    ``image_area`` px (the bin's upper bound belongs to it, as in COCO)."""
    if image_area <= 0:
        raise ValueError(f"image_area must be > 0, got {image_area}")
    share = area / image_area
    for name, (_, hi) in RELATIVE_BINS.items():
        if share <= hi:
            return name
    return "large"


def make_proxy_split(root: Path, img_size: int, num_images: int, seed: int) -> ShapesDataset:
    """Write one split under ``root`` (replacing an earlier one) and return where it lies."""
    return make_shapes_dataset(root, background_shapes_config(img_size, num_images, seed), True)


def object_share(dataset: ShapesDataset) -> Dict[str, Any]:
    """What a split holds: mean share of image area on objects and object counts per relative bin.

    The share is the sum of the visible (non-overlapping) instance areas over the image area.
    """
    if dataset.coco_annotations is None:
        raise ValueError("the dataset has no COCO annotations to measure")
    coco = json.loads(Path(dataset.coco_annotations).read_text(encoding="utf-8"))
    areas = {img["id"]: float(img["width"] * img["height"]) for img in coco["images"]}
    covered = {i: 0.0 for i in areas}
    bins = {name: 0 for name in RELATIVE_BINS}
    for ann in coco["annotations"]:
        covered[ann["image_id"]] += float(ann["area"])
        bins[relative_bin(float(ann["area"]), areas[ann["image_id"]])] += 1
    shares: Sequence[float] = [covered[i] / areas[i] for i in areas]
    return {
        "images": len(areas),
        "objects": len(coco["annotations"]),
        "object_share": sum(shares) / max(len(shares), 1),
        "max_object_share": max(shares, default=0.0),
        "bins": bins,
        "seed": coco["info"]["seed"],
    }


def image_areas(annotations: Path) -> Dict[int, float]:
    """Image id -> width x height of a COCO annotation file."""
    coco = json.loads(Path(annotations).read_text(encoding="utf-8"))
    return {img["id"]: float(img["width"] * img["height"]) for img in coco["images"]}


def bin_labels(image_ids: List[int], areas: List[float], image_area: Dict[int, float]) -> List[str]:
    """The relative bin of each object (parallel lists of image ids and object areas)."""
    return [relative_bin(a, image_area[i]) for i, a in zip(image_ids, areas)]


def token_bins(annotations: Path, ann_ids: Sequence[int], patch_size: int) -> List[str]:
    """The token-size bin of each annotation id (its box's longer side in tokens)."""
    data = json.loads(Path(annotations).read_text())
    across = {a["id"]: max(a["bbox"][2], a["bbox"][3]) / patch_size for a in data["annotations"]}
    out = []
    for i in ann_ids:
        out.append(next(n for n, _, _, hi in TOKEN_BINS if hi is None or across[int(i)] < hi))
    return out

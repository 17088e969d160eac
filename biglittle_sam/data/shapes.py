"""A synthetic segmentation dataset with exact instance masks, in COCO, LVIS and SA-1B format.

:mod:`.shapes_render` draws each image (a textured or noisy background and a few overlapping
shapes, painted in order on a label map, so every instance's visible mask is exact); this module
writes the images and their annotations:

- A polygon shape that nothing covers is stored as its polygon. Its mask is defined as
  pycocotools' rasterization of that polygon, so a reader that goes through pycocotools gets back
  exactly the painted pixels.
- Every other instance (ellipses, rings, covered shapes) is stored as compressed RLE.
- Every ``crowd_every``-th image gets a crowd region (a cluster of dots, ``iscrowd=1``) stored as
  uncompressed RLE, as COCO stores its crowd annotations.
- Image 0 also gets a one-pixel object and a rectangle cut by the image corner (``edge_cases``).

Layout under ``out_dir``::

    coco/val2017/000000000001.jpg ...           images (COCO and LVIS)
    coco/annotations/instances_shapes.json      COCO instances (polygons, RLE, crowd)
    coco/annotations/lvis_shapes.json           LVIS style: coco_url, no crowd
    coco/detections_shapes.json                 a noisy "detector" in COCO results format
    sa1b/sa_1.jpg, sa1b/sa_1.json ...           SA-1B format (compressed RLE, no crowd)

The proxy benchmark and the tests both use it: ``make_shapes_dataset(out_dir, ShapesConfig())``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .masks import encode_mask, rle_area, rle_bbox
from .records import PathLike
from .shapes_render import (
    CATEGORIES,
    SHAPE_KINDS,
    TOKEN_BINS,
    ShapesConfig,
    background_shapes_config,
    render_shapes_image,
    token_sized_shapes_config,
)

__all__ = [
    "ShapesConfig",
    "ShapesDataset",
    "SHAPE_KINDS",
    "TOKEN_BINS",
    "background_shapes_config",
    "describe_shapes",
    "make_shapes_dataset",
    "render_shapes_image",
    "token_sized_shapes_config",
    "uncompressed_rle",
]


@dataclass(frozen=True)
class ShapesDataset:
    """Where :func:`make_shapes_dataset` wrote each format (None for formats not written)."""

    root: Path
    coco_annotations: Optional[Path]
    coco_images: Optional[Path]
    lvis_annotations: Optional[Path]
    lvis_image_root: Optional[Path]
    sa1b_dir: Optional[Path]
    detections: Optional[Path]
    num_images: int
    num_instances: int  # COCO annotations, crowd regions included
    image_ids: List[int] = field(default_factory=list)


def uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO's uncompressed RLE of an H x W bool mask: column-major runs, starting with zeros."""
    h, w = mask.shape
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def _check_out_dir(root: Path, overwrite: bool, parts: List[str]) -> None:
    for part in parts:
        target = root / part
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{target} already exists and is not empty; pass overwrite=True "
                    "(--overwrite) to replace it"
                )
            shutil.rmtree(target)


def make_shapes_dataset(
    out_dir: PathLike, config: Optional[ShapesConfig] = None, overwrite: bool = False
) -> ShapesDataset:
    """Write a synthetic shapes dataset (see the module docstring for the layout).

    Arguments:
      out_dir: the folder to write into; its ``coco/`` and ``sa1b/`` parts are created.
      config: what to draw; ``ShapesConfig()`` when None.
      overwrite: replace existing ``coco/`` / ``sa1b/`` folders instead of refusing.

    Images are written one at a time, so the generator needs memory for one image only.
    """
    config = config or ShapesConfig()
    root = Path(out_dir)
    want_coco = "coco" in config.formats or "lvis" in config.formats
    parts = (["coco"] if want_coco else []) + (["sa1b"] if "sa1b" in config.formats else [])
    _check_out_dir(root, overwrite, parts)
    coco_images = root / "coco" / "val2017"
    sa1b_dir = root / "sa1b"
    if want_coco:
        coco_images.mkdir(parents=True, exist_ok=True)
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
    if "sa1b" in config.formats:
        sa1b_dir.mkdir(parents=True, exist_ok=True)
    written = _Written(det_rng=np.random.default_rng([config.seed, 1_000_003]))
    for index in range(config.num_images):
        _write_image(index, config, written, coco_images if want_coco else None, sa1b_dir)
    coco_json = det_json = lvis_json = None
    if "coco" in config.formats:
        coco_json, det_json = _write_coco(root, config, written)
    if "lvis" in config.formats:
        lvis_json = _write_lvis(root, written)
    return ShapesDataset(
        root=root,
        coco_annotations=coco_json,
        coco_images=coco_images if want_coco else None,
        lvis_annotations=lvis_json,
        lvis_image_root=root / "coco" if lvis_json else None,
        sa1b_dir=sa1b_dir if "sa1b" in config.formats else None,
        detections=det_json,
        num_images=config.num_images,
        num_instances=len(written.annotations),
        image_ids=written.image_ids,
    )


@dataclass
class _Written:
    """What the images written so far add up to: COCO's images, annotations and detections."""

    det_rng: np.random.Generator  # the detector's and SA-1B's scores, over the whole dataset
    images: List[Dict[str, Any]] = field(default_factory=list)
    annotations: List[Dict[str, Any]] = field(default_factory=list)  # crowd regions included
    detections: List[Dict[str, Any]] = field(default_factory=list)
    image_ids: List[int] = field(default_factory=list)


def _write_image(
    index: int,
    config: ShapesConfig,
    written: _Written,
    coco_images: Optional[Path],
    sa1b_dir: Path,
) -> None:
    """Draw image ``index``, write its JPEG (and its SA-1B json), and add its annotations and
    detections to ``written`` (``coco_images``: None when no COCO or LVIS is written)."""
    image, instances = render_shapes_image(index, config)
    height, width = image.shape[:2]
    image_id = index + 1
    written.image_ids.append(image_id)
    file_name = f"{image_id:012d}.jpg"
    sa1b_name = f"sa_{image_id}.jpg"
    jpeg = coco_images / file_name if coco_images is not None else sa1b_dir / sa1b_name
    Image.fromarray(image).save(jpeg, quality=config.jpeg_quality)
    written.images.append(
        {"id": image_id, "width": width, "height": height, "file_name": file_name}
    )
    sa1b_anns = []
    rng = written.det_rng
    for inst in instances:
        ann_id = len(written.annotations) + 1
        coco, sa1b = _instance_annotations(ann_id, image_id, inst, rng, width, height)
        written.annotations.append(coco)
        if sa1b is None:  # a crowd region: COCO only, and no detection
            continue
        sa1b_anns.append(sa1b)
        if config.detections:
            box = coco["bbox"]
            written.detections.extend(
                _noisy_detection(rng, image_id, inst["category_id"], box, width, height)
            )
    if config.detections:
        written.detections.extend(_false_positives(rng, image_id, width, height))
    if "sa1b" in config.formats:
        target = sa1b_dir / sa1b_name
        if jpeg != target:
            shutil.copyfile(jpeg, target)
        info = {"image_id": image_id, "width": width, "height": height, "file_name": sa1b_name}
        sa1b_json = {"image": info, "annotations": sa1b_anns}
        (sa1b_dir / f"sa_{image_id}.json").write_text(json.dumps(sa1b_json), encoding="utf-8")


def _instance_annotations(
    ann_id: int,
    image_id: int,
    inst: Dict[str, Any],
    rng: np.random.Generator,
    width: int,
    height: int,
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """One instance's COCO annotation and its SA-1B one (None for a crowd region; its scores are
    drawn from ``rng``). ``inst``: an instance of :func:`render_shapes_image` (mask H x W bool)."""
    mask = inst["mask"]
    rle = encode_mask(mask)
    bbox = rle_bbox(rle)
    area = rle_area(rle)
    if inst["crowd"]:
        seg: Any = uncompressed_rle(mask)
    elif inst["polygon"] is not None:
        seg = [inst["polygon"]]
    else:
        seg = rle
    coco = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": inst["category_id"],
        "segmentation": seg,
        "area": float(area),
        "bbox": bbox,
        "iscrowd": int(inst["crowd"]),
    }
    if inst["crowd"]:
        return coco, None
    ys, xs = np.nonzero(mask)
    middle = len(ys) // 2
    sa1b = {
        "id": ann_id,
        "segmentation": rle,
        "bbox": bbox,
        "area": int(area),
        "predicted_iou": round(float(rng.uniform(0.85, 1.0)), 4),
        "stability_score": round(float(rng.uniform(0.9, 1.0)), 4),
        "point_coords": [[float(xs[middle]), float(ys[middle])]],
        "crop_box": [0.0, 0.0, float(width), float(height)],
    }
    return coco, sa1b


def _categories() -> List[Dict[str, Any]]:
    """COCO's category list: one per shape kind, then the crowd dots and the one-pixel object."""
    return [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)
    ]


def _write_coco(root: Path, config: ShapesConfig, written: _Written) -> Tuple[Path, Optional[Path]]:
    """COCO's instances json, and the detector's results (``config.detections``; else None)."""
    coco_json = root / "coco" / "annotations" / "instances_shapes.json"
    payload = {
        "info": {"description": "biglittle-sam synthetic shapes", "seed": config.seed},
        "images": written.images,
        "annotations": written.annotations,
        "categories": _categories(),
    }
    coco_json.write_text(json.dumps(payload), encoding="utf-8")
    if not config.detections:
        return coco_json, None
    det_json = root / "coco" / "detections_shapes.json"
    det_json.write_text(json.dumps(written.detections), encoding="utf-8")
    return coco_json, det_json


def _write_lvis(root: Path, written: _Written) -> Path:
    """The LVIS-style json: COCO's images with a ``coco_url``, no crowd regions."""
    lvis_json = root / "coco" / "annotations" / "lvis_shapes.json"
    lvis_images = [
        {
            "id": img["id"],
            "width": img["width"],
            "height": img["height"],
            "coco_url": f"http://images.cocodataset.org/val2017/{img['file_name']}",
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for img in written.images
    ]
    lvis_anns = [
        {k: v for k, v in a.items() if k != "iscrowd"}
        for a in written.annotations
        if not a["iscrowd"]
    ]
    payload = {"images": lvis_images, "annotations": lvis_anns, "categories": _categories()}
    lvis_json.write_text(json.dumps(payload), encoding="utf-8")
    return lvis_json


def _noisy_detection(
    rng: np.random.Generator,
    image_id: int,
    category_id: int,
    bbox: List[float],
    width: int,
    height: int,
) -> List[Dict[str, Any]]:
    """A detector's box for one object: jittered, sometimes missed or mislabelled."""
    if rng.random() < 0.1:
        return []
    x, y, w, h = bbox
    jitter = rng.normal(0, 0.08, size=4) * np.array([w, h, w, h])
    x0 = float(np.clip(x + jitter[0], 0, width - 1))
    y0 = float(np.clip(y + jitter[1], 0, height - 1))
    x1 = float(np.clip(x + w + jitter[2], x0 + 1, width))
    y1 = float(np.clip(y + h + jitter[3], y0 + 1, height))
    category = category_id if rng.random() < 0.9 else int(rng.integers(1, len(CATEGORIES) + 1))
    return [
        {
            "image_id": image_id,
            "category_id": int(category),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(rng.uniform(0.5, 1.0)), 4),
        }
    ]


def _false_positives(
    rng: np.random.Generator, image_id: int, width: int, height: int
) -> List[Dict[str, Any]]:
    out = []
    for _ in range(int(rng.integers(0, 3))):
        w = float(rng.uniform(4, width / 2))
        h = float(rng.uniform(4, height / 2))
        x = float(rng.uniform(0, width - w))
        y = float(rng.uniform(0, height - h))
        out.append(
            {
                "image_id": image_id,
                "category_id": int(rng.integers(1, len(CATEGORIES) + 1)),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "score": round(float(rng.uniform(0.05, 0.5)), 4),
            }
        )
    return out


def describe_shapes(annotations: PathLike, patch_size: int) -> Dict[str, Any]:
    """What a COCO-format shapes split holds, in tokens of ``patch_size`` pixels: instances per
    size bin of :data:`TOKEN_BINS` (by the bounding box's longer side) and the share of each
    image the objects cover, on average (visible masks do not overlap, so areas add up).

    Returns:
      {"images", "instances", "bins": {name: count}, "bin_shares": {name: share},
      "object_share"}; crowd regions are left out.
    """
    data = json.loads(Path(annotations).read_text())
    sizes = {im["id"]: im["width"] * im["height"] for im in data["images"]}
    bins = {name: 0 for name, *_ in TOKEN_BINS}
    covered = {image_id: 0.0 for image_id in sizes}
    for ann in data["annotations"]:
        if ann.get("iscrowd"):
            continue
        across = max(ann["bbox"][2], ann["bbox"][3]) / patch_size
        name = next(n for n, _, lo, hi in TOKEN_BINS if hi is None or across < hi)
        bins[name] += 1
        covered[ann["image_id"]] += ann["area"]
    total = sum(bins.values())
    return {
        "images": len(sizes),
        "instances": total,
        "bins": bins,
        "bin_shares": {k: v / total if total else 0.0 for k, v in bins.items()},
        "object_share": float(np.mean([covered[i] / sizes[i] for i in sizes])) if sizes else 0.0,
    }

"""COCO instance annotations (``instances_*.json`` + an image folder).

The annotation file is checked once when it is opened: every image and annotation is looked at,
and a malformed one is reported with the file, its position, its id and what was expected.
Segmentations are turned into masks by ``pycocotools.mask`` only when an instance is evaluated,
and pixels are read one image at a time.

    dataset = CocoDataset("annotations/instances_val2017.json", "val2017/")
    for i in range(len(dataset)):
        record = dataset.record(i)         # image id, path, size, instances
        image = dataset.load_image(record)  # H x W x 3 uint8, or ImageProblemError
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DatasetError, _as_int, _first, _is_number, _numbers, _short
from .masks import segmentation_problem, segmentation_size
from .records import (
    EvalDataset,
    ImageProblem,
    ImageProblemError,
    ImageRecord,
    Instance,
    PathLike,
    apply_limit,
)

__all__ = [
    "BOX_TOLERANCE_PX",
    "CocoDataset",
    "check_inside_root",
    "load_annotation_json",
    "read_json_file",
    "screen_annotation",
    "screen_record_annotations",
    "sort_key",
]

# A box may reach this far past the image edge and is used as it is: boxes computed from masks
# that touch the border end a rounding error past it, and the published numbers keep them as
# they are. Boxes reaching further are clipped to the image, and counted.
BOX_TOLERANCE_PX = 1.0

Box = Tuple[float, float, float, float]


def sort_key(image_id: Any) -> Tuple[bool, Any]:
    """Order image ids of mixed types (ints first, then strings) without a TypeError."""
    return (isinstance(image_id, str), image_id)


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file; DatasetError naming the file and ``what`` it should be otherwise."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            f"expected a {what}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the {what}: {e}") from None


def load_annotation_json(path: PathLike, flavor: str = "coco") -> Dict[str, Any]:
    """Read and check a COCO-style instance annotation file.

    Arguments:
      path: the json file.
      flavor: ``coco`` (images need ``file_name``) or ``lvis`` (images need ``coco_url`` or
        ``file_name``; annotations have no ``iscrowd``).

    Returns:
      The parsed dict, with ``iscrowd`` filled in as 0 where it is absent.

    Raises:
      DatasetError: naming the file and the first problems found, with the expected form.
    """
    p = Path(path)
    what = "LVIS annotation file" if flavor == "lvis" else "COCO instance annotation file"
    data = read_json_file(p, what)
    if not isinstance(data, dict):
        raise DatasetError(
            f"{p}: expected a JSON object with 'images' and 'annotations' lists, "
            f"got a {type(data).__name__}"
        )
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DatasetError(
                f"{p}: expected a JSON object with 'images' and 'annotations' lists; "
                f"'{key}' is {'missing' if key not in data else type(data[key]).__name__}"
            )
    if "categories" in data and not isinstance(data["categories"], list):
        raise DatasetError(f"{p}: 'categories' must be a list")
    problems: List[str] = []
    sizes: Dict[Any, Tuple[int, int]] = {}
    for i, img in enumerate(data["images"]):
        problem = _image_problem(img, flavor)
        if problem is not None:
            problems.append(f"images[{i}]{_id_of(img)}: {problem}")
            continue
        if img["id"] in sizes:
            problems.append(f"images[{i}]: duplicate image id {img['id']!r}")
        sizes[img["id"]] = (int(img["height"]), int(img["width"]))
    for i, ann in enumerate(data["annotations"]):
        problem = _annotation_problem(ann, sizes)
        if problem is not None:
            problems.append(f"annotations[{i}]{_id_of(ann)}: {problem}")
        elif "iscrowd" not in ann:
            ann["iscrowd"] = 0
    if problems:
        raise DatasetError(f"{p}: malformed {what}: {_first(problems)}")
    return data


def _id_of(obj: Any) -> str:
    return f" (id {obj['id']!r})" if isinstance(obj, dict) and "id" in obj else ""


def _image_problem(img: Any, flavor: str) -> Optional[str]:
    if not isinstance(img, dict):
        return f"must be an object, got {type(img).__name__}"
    if not isinstance(img.get("id"), (int, str)) or isinstance(img.get("id"), bool):
        return f"'id' must be an int, got {_short(img.get('id'))}"
    for key in ("height", "width"):
        v = _as_int(img.get(key))
        if v is None or v < 1:
            return f"'{key}' must be a positive int, got {_short(img.get(key))}"
    if flavor == "lvis":
        if not isinstance(img.get("coco_url"), str) and not isinstance(img.get("file_name"), str):
            return "needs 'coco_url' (or 'file_name') to find its image file"
    elif not isinstance(img.get("file_name"), str) or not img["file_name"]:
        return f"'file_name' must be a non-empty string, got {_short(img.get('file_name'))}"
    return None


def _annotation_problem(ann: Any, sizes: Dict[Any, Tuple[int, int]]) -> Optional[str]:
    if not isinstance(ann, dict):
        return f"must be an object, got {type(ann).__name__}"
    if "id" not in ann:
        return "'id' is missing"
    if ann.get("image_id") not in sizes:
        return f"'image_id' {_short(ann.get('image_id'))} is not an image listed in 'images'"
    bbox = ann.get("bbox")
    if not _numbers(bbox, 4) or bbox[2] < 0 or bbox[3] < 0:
        return f"'bbox' must be [x, y, width, height] with width, height >= 0, got {_short(bbox)}"
    if not _is_number(ann.get("area")):
        return f"'area' must be a number, got {_short(ann.get('area'))}"
    if ann.get("iscrowd", 0) not in (0, 1):
        return f"'iscrowd' must be 0 or 1, got {_short(ann.get('iscrowd'))}"
    if "segmentation" not in ann:
        return "'segmentation' is missing"
    if ann["segmentation"] == []:
        return None  # an empty polygon list: skipped and listed when its image is read
    return segmentation_problem(ann["segmentation"])


def screen_annotation(
    ann: Dict[str, Any], image_id: Any, height: int, width: int
) -> Tuple[Optional[Box], Optional[Dict[str, Any]]]:
    """Check that a structurally valid annotation can be scored on its image.

    Arguments:
      ann: the annotation (``bbox`` [x, y, w, h] of numbers, ``area``, ``segmentation``).
      image_id: its image, recorded in the issue.
      height, width: the image size in pixels.

    Returns:
      ``(box, None)`` for a usable annotation, with ``box`` exactly as the file gives it;
      ``(clipped box, issue)`` when the box reaches more than :data:`BOX_TOLERANCE_PX` past the
      image (action ``clipped``, reason ``bbox_off_image``); ``(None, issue)`` when the annotation
      must be skipped (action ``skipped``), with reason ``bbox_not_finite``, ``area_not_finite``,
      ``bbox_outside_image`` (no overlap with the image) or ``empty_polygon`` (polygons that cover
      no pixel). ``issue`` is a JSON-ready dict ``{image_id, ann_id, action, reason, detail}``.
    """

    def issue(action: str, reason: str, detail: str) -> Dict[str, Any]:
        return {
            "image_id": image_id,
            "ann_id": ann.get("id"),
            "action": action,
            "reason": reason,
            "detail": detail,
        }

    x, y, w, h = (float(v) for v in ann["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, issue("skipped", "bbox_not_finite", f"bbox {_short(ann['bbox'])}")
    if not math.isfinite(float(ann["area"])):
        return None, issue("skipped", "area_not_finite", f"area {_short(ann['area'])}")
    x1, y1 = x + w, y + h
    size = f"the {width}x{height} (w x h) image"
    if x >= width or y >= height or x1 <= 0 or y1 <= 0:
        return None, issue(
            "skipped", "bbox_outside_image", f"bbox {_short(ann['bbox'])} lies outside {size}"
        )
    if _polygons_empty(ann["segmentation"], height, width):
        return None, issue(
            "skipped",
            "empty_polygon",
            f"segmentation {_short(ann['segmentation'])} covers no pixel",
        )
    t = BOX_TOLERANCE_PX
    if x < -t or y < -t or x1 > width + t or y1 > height + t:
        cx, cy = max(x, 0.0), max(y, 0.0)
        cx1, cy1 = min(x1, float(width)), min(y1, float(height))
        clipped = (cx, cy, cx1 - cx, cy1 - cy)
        return clipped, issue(
            "clipped",
            "bbox_off_image",
            f"bbox {_short(ann['bbox'])} reaches past {size}; clipped to "
            f"[{cx:g}, {cy:g}, {cx1 - cx:g}, {cy1 - cy:g}]",
        )
    return (x, y, w, h), None


def _polygons_empty(seg: Any, height: int, width: int) -> bool:
    """Whether ``seg`` is a polygon list that rasterizes to no pixel (RLEs are never empty here)."""
    if not isinstance(seg, list):
        return False
    parts = [[float(v) for v in p] for p in seg if len(p) >= 6]  # under 3 points: no area
    if not parts:
        return True
    from pycocotools import mask as mask_utils

    rles = mask_utils.frPyObjects(parts, height, width)
    return int(np.sum(mask_utils.area(rles))) == 0


def check_inside_root(root: Path, record: ImageRecord) -> ImageRecord:
    """``record`` with its path normalized, or an ``outside_images`` :class:`ImageProblemError`
    when that path leaves ``root``.

    The check is on the path as written (``..`` collapsed, absolute names kept absolute), and the
    normalized path is the one read, so an annotation's ``file_name`` of ``/etc/passwd`` or
    ``../x.jpg`` never reaches a file outside the image folder, while symbolic links placed inside
    the folder by its owner still work.
    """
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.abspath(record.path))
    if os.path.commonpath([base, path]) != base:
        raise ImageProblemError(
            ImageProblem(
                record.image_id,
                record.file_name,
                "outside_images",
                f"the annotation's file name leads to {path}, outside the image folder {base}; "
                "image file names must stay inside --images",
            )
        )
    return dataclasses.replace(record, path=Path(path))


def screen_record_annotations(
    anns: Sequence[Dict[str, Any]], image_id: Any, height: int, width: int
) -> Tuple[List[Tuple[Dict[str, Any], Box]], Dict[str, int], List[Dict[str, Any]]]:
    """:func:`screen_annotation` over an image's annotations.

    Returns:
      (kept (annotation, box) pairs in order, skip counts by reason, issues in order).
    """
    kept: List[Tuple[Dict[str, Any], Box]] = []
    skipped: Dict[str, int] = {}
    issues: List[Dict[str, Any]] = []
    for ann in anns:
        box, problem = screen_annotation(ann, image_id, height, width)
        if problem is not None:
            issues.append(problem)
        if box is None:
            reason = problem["reason"] if problem is not None else "unusable"
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            kept.append((ann, box))
    return kept, skipped, issues


class CocoDataset(EvalDataset):
    """COCO instance annotations and their images, one :class:`ImageRecord` per image.

    Images are ordered by id. Annotations with ``area < min_area`` are skipped and counted
    (``skipped["area<1"]``); crowd annotations are kept or skipped and counted
    (``skipped["crowd"]``) according to ``include_crowd``.
    """

    kind = "coco"
    flavor = "coco"

    def __init__(
        self,
        annotation_file: PathLike,
        image_root: PathLike,
        include_crowd: bool = True,
        min_area: float = 1.0,
        require_instances: bool = True,
        limit: Optional[int] = None,
    ) -> None:
        """
        Arguments:
          annotation_file: ``instances_*.json``.
          image_root: the folder its ``file_name`` entries are relative to.
          include_crowd: evaluate ``iscrowd=1`` annotations (the EfficientViT-SAM protocol does;
            the EdgeSAM protocol does not).
          min_area: annotations with a smaller ``area`` are skipped and counted.
          require_instances: list only images with at least one annotation (mIoU); False lists
            every image (mask AP, where an image without objects still counts).
          limit: keep only the first ``limit`` images (in id order).
        """
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        if not self.image_root.is_dir():
            raise DatasetError(f"{self.image_root}: image folder not found")
        self.include_crowd = include_crowd
        self.min_area = float(min_area)
        self.data = load_annotation_json(self.annotation_file, self.flavor)
        self._images = {img["id"]: img for img in self.data["images"]}
        self._anns: Dict[Any, List[Dict[str, Any]]] = {}
        for ann in self.data["annotations"]:
            self._anns.setdefault(ann["image_id"], []).append(ann)
        ids = sorted(self._images, key=sort_key)
        if require_instances:
            ids = [i for i in ids if self._anns.get(i)]
        self.image_ids: List[Any] = apply_limit(ids, limit)

    def __len__(self) -> int:
        return len(self.image_ids)

    def describe(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "annotations": str(self.annotation_file),
            "images": str(self.image_root),
            "include_crowd": self.include_crowd,
            "min_area": self.min_area,
        }

    def image_path(self, img: Dict[str, Any]) -> Path:
        """Where the file of image entry ``img`` lives."""
        return self.image_root / img["file_name"]

    def record(self, index: int) -> ImageRecord:
        image_id = self.image_ids[index]
        img = self._images[image_id]
        height, width = int(img["height"]), int(img["width"])
        where = f"{self.annotation_file.name}: annotation id"
        instances: List[Instance] = []
        skipped: Dict[str, int] = {}
        area_key = f"area<{self.min_area:g}"
        candidates = []
        for ann in self._anns.get(image_id, []):
            if float(ann["area"]) < self.min_area:
                skipped[area_key] = skipped.get(area_key, 0) + 1
                continue
            if int(ann.get("iscrowd", 0)) and not self.include_crowd:
                skipped["crowd"] = skipped.get("crowd", 0) + 1
                continue
            candidates.append(ann)
        kept, unusable, issues = screen_record_annotations(candidates, image_id, height, width)
        for reason, count in unusable.items():
            skipped[reason] = skipped.get(reason, 0) + count
        for ann, box in kept:
            crowd = int(ann.get("iscrowd", 0))
            seg = ann["segmentation"]
            h, w = segmentation_size(seg, height, width)
            instances.append(
                Instance(
                    ann_id=ann["id"],
                    bbox=box,
                    area=float(ann["area"]),
                    segmentation=seg,
                    iscrowd=crowd,
                    category_id=_as_int(ann.get("category_id")),
                    height=h,
                    width=w,
                    where=f"{where} {ann['id']!r}",
                )
            )
        file_name = str(img.get("file_name") or Path(self.image_path(img)).name)
        return ImageRecord(
            index=index,
            image_id=image_id,
            file_name=file_name,
            path=self.image_path(img),
            height=height,
            width=width,
            instances=instances,
            skipped=skipped,
            issues=issues,
        )

    def load_image(self, record: ImageRecord) -> np.ndarray:
        """H x W x 3 uint8 RGB; an ``outside_images`` problem when the file name leaves it."""
        return super().load_image(check_inside_root(self.image_root, record))

    def category_ids(self) -> List[Any]:
        """Ids of the file's categories (from ``categories``, else from the annotations)."""
        cats = self.data.get("categories")
        if cats:
            return [c.get("id") for c in cats if isinstance(c, dict)]
        return sorted({a.get("category_id") for a in self.data["annotations"]}, key=sort_key)

    def to_coco_api(self) -> Any:
        """A ``pycocotools.coco.COCO`` over this file (for ``COCOeval``), built without printing.

        Polygon parts under 3 points are dropped first: pycocotools would read a 4-number part as
        a box and fail on shorter ones.
        """
        from pycocotools.coco import COCO  # lazy: pycocotools is optional (extra "eval")

        anns = []
        for ann in self.data["annotations"]:
            seg = ann.get("segmentation")
            if isinstance(seg, list) and any(len(p) < 6 for p in seg):
                kept = [p for p in seg if len(p) >= 6]
                ann = dict(ann, segmentation=kept or _empty_rle(self._images[ann["image_id"]]))
            anns.append(ann)
        dataset = dict(self.data, annotations=anns)
        dataset.setdefault("categories", [{"id": c} for c in self.category_ids()])
        api = COCO()
        api.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            api.createIndex()
        return api


def _empty_rle(img: Dict[str, Any]) -> Dict[str, Any]:
    h, w = int(img["height"]), int(img["width"])
    return {"size": [h, w], "counts": [h * w]}

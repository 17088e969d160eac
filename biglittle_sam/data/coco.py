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
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import DatasetError, _as_int, _bbox, _first, _is_number, _numbers, _short
from .masks import segmentation_problem, segmentation_size
from .records import EvalDataset, ImageRecord, Instance, PathLike, apply_limit

__all__ = ["CocoDataset", "load_annotation_json", "read_json_file", "sort_key"]


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
    return segmentation_problem(ann["segmentation"])


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
        for ann in self._anns.get(image_id, []):
            if float(ann["area"]) < self.min_area:
                skipped[area_key] = skipped.get(area_key, 0) + 1
                continue
            crowd = int(ann.get("iscrowd", 0))
            if crowd and not self.include_crowd:
                skipped["crowd"] = skipped.get("crowd", 0) + 1
                continue
            seg = ann["segmentation"]
            h, w = segmentation_size(seg, height, width)
            instances.append(
                Instance(
                    ann_id=ann["id"],
                    bbox=_bbox(ann["bbox"]),
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
        )

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

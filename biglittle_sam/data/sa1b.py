"""SA-1B folders: ``sa_<id>.jpg`` next to ``sa_<id>.json``.

Each json holds ``image`` ``{image_id, width, height, file_name}`` and ``annotations``
``[{id, segmentation: {size: [h, w], counts: <compressed RLE string>}, bbox: [x, y, w, h], area,
predicted_iou, stability_score, point_coords, crop_box}]``. Only the file names are listed up
front; an image's json is read when the evaluation reaches it.

EdgeSAM's "SA-1K" evaluation samples 64 instances per image over a held-out set of images:
``SA1BDataset(root, instances_per_image=64, seed=0, image_list="held_out.txt")``. The sample
depends only on the seed and the image id, so it is the same in every process and every run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .coco import check_inside_root, read_json_file, screen_record_annotations
from .errors import DatasetError, _as_int, _first, _is_number, _numbers, _short
from .masks import segmentation_problem, segmentation_size
from .records import EvalDataset, ImageRecord, Instance, PathLike, apply_limit, stable_key

__all__ = ["SA1BDataset", "read_image_list"]

_NAME = re.compile(r"^sa_(\d+)$")


def read_image_list(path: PathLike) -> List[str]:
    """Stems (``sa_123``) from a text file with one image per line: ``sa_123``, ``sa_123.jpg`` or
    ``123``. Blank lines and ``#`` comments are ignored."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: image list not found")
    stems = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        stem = Path(text).stem if not text.isdigit() else f"sa_{text}"
        if not _NAME.match(stem):
            raise DatasetError(
                f"{p}: line {n}: expected an SA-1B image name such as 'sa_123', 'sa_123.jpg' or "
                f"'123', got {text!r}"
            )
        stems.append(stem)
    return stems


class SA1BDataset(EvalDataset):
    """An SA-1B folder, optionally restricted to an image list and sampled per image."""

    kind = "sa1b"

    def __init__(
        self,
        root: PathLike,
        instances_per_image: Optional[int] = None,
        seed: int = 0,
        image_list: Optional[PathLike] = None,
        min_area: float = 1.0,
        limit: Optional[int] = None,
    ) -> None:
        """
        Arguments:
          root: the folder with ``sa_<id>.json`` and ``sa_<id>.jpg`` files.
          instances_per_image: sample this many annotations per image (without replacement; all
            when an image has fewer), or None for all. EdgeSAM's SA-1K uses 64.
          seed: seeds the per-image sample together with the image id.
          image_list: a text file naming the images to use (a held-out set), one per line.
          min_area: annotations with a smaller ``area`` are skipped and counted.
          limit: keep only the first ``limit`` images (in id order).
        """
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: SA-1B folder not found")
        if instances_per_image is not None and instances_per_image < 1:
            raise ValueError(f"instances_per_image must be >= 1, got {instances_per_image}")
        self.instances_per_image = instances_per_image
        self.seed = int(seed)
        self.min_area = float(min_area)
        self.image_list = Path(image_list) if image_list is not None else None
        found = {p.stem for p in self.root.glob("sa_*.json") if _NAME.match(p.stem)}
        if self.image_list is not None:
            wanted = read_image_list(self.image_list)
            missing = [s for s in wanted if s not in found]
            if missing:
                raise DatasetError(
                    f"{self.image_list}: {len(missing)} listed images have no annotation json in "
                    f"{self.root}, e.g. {', '.join(s + '.json' for s in missing[:3])}"
                )
            stems = list(dict.fromkeys(wanted))
        else:
            stems = list(found)
        if not stems:
            raise DatasetError(f"{self.root}: no SA-1B annotation files (sa_<id>.json) found")
        stems.sort(key=lambda s: int(s[3:]))
        self.stems: List[str] = apply_limit(stems, limit)

    def __len__(self) -> int:
        return len(self.stems)

    def describe(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "root": str(self.root),
            "image_list": str(self.image_list) if self.image_list else None,
            "instances_per_image": self.instances_per_image,
            "seed": self.seed,
            "min_area": self.min_area,
        }

    def record(self, index: int) -> ImageRecord:
        stem = self.stems[index]
        path = self.root / f"{stem}.json"
        data = read_json_file(path, "SA-1B annotation file")
        image, anns = _check_sa1b(data, path)
        height, width = int(image["height"]), int(image["width"])
        image_id = image["image_id"]
        skipped: Dict[str, int] = {}
        area_key = f"area<{self.min_area:g}"
        kept = []
        for ann in anns:
            if float(ann["area"]) < self.min_area:
                skipped[area_key] = skipped.get(area_key, 0) + 1
            else:
                kept.append(ann)
        usable, unusable, issues = screen_record_annotations(kept, image_id, height, width)
        for reason, count in unusable.items():
            skipped[reason] = skipped.get(reason, 0) + count
        if self.instances_per_image is not None and len(usable) > self.instances_per_image:
            rng = np.random.default_rng([self.seed, stable_key(image_id)])
            chosen = np.sort(rng.choice(len(usable), size=self.instances_per_image, replace=False))
            skipped["not_sampled"] = len(usable) - self.instances_per_image
            usable = [usable[int(i)] for i in chosen]
        instances = []
        for ann, box in usable:
            seg = ann["segmentation"]
            h, w = segmentation_size(seg, height, width)
            instances.append(
                Instance(
                    ann_id=ann["id"],
                    bbox=box,
                    area=float(ann["area"]),
                    segmentation=seg,
                    iscrowd=0,
                    category_id=None,
                    height=h,
                    width=w,
                    where=f"{path.name}: annotation id {ann['id']!r}",
                )
            )
        file_name = str(image.get("file_name") or f"{stem}.jpg")
        return ImageRecord(
            index=index,
            image_id=image_id,
            file_name=file_name,
            path=self.root / Path(file_name).name,
            height=height,
            width=width,
            instances=instances,
            skipped=skipped,
            issues=issues,
        )

    def load_image(self, record: ImageRecord) -> np.ndarray:
        """H x W x 3 uint8 RGB; an ``outside_images`` problem when the file name leaves it."""
        return super().load_image(check_inside_root(self.root, record))


def _check_sa1b(data: Any, path: Path) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """(image dict, annotation list) of an SA-1B json, or DatasetError naming what is wrong."""
    form = (
        "expected {'image': {image_id, width, height, file_name}, 'annotations': [{id, "
        "segmentation: {size: [h, w], counts}, bbox: [x, y, w, h], area, ...}]}"
    )
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: {form}; got a {type(data).__name__}")
    image = data.get("image")
    anns = data.get("annotations")
    if not isinstance(image, dict) or not isinstance(anns, list):
        raise DatasetError(
            f"{path}: {form}; 'image' or 'annotations' is missing or of the wrong type"
        )
    problems = []
    if "image_id" not in image:
        problems.append("image: 'image_id' is missing")
    for key in ("height", "width"):
        v = _as_int(image.get(key))
        if v is None or v < 1:
            problems.append(f"image: '{key}' must be a positive int, got {_short(image.get(key))}")
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            problems.append(f"{where}: must be an object")
            continue
        if "id" not in ann:
            problems.append(f"{where}: 'id' is missing")
        bbox = ann.get("bbox")
        if not _numbers(bbox, 4) or bbox[2] < 0 or bbox[3] < 0:
            problems.append(f"{where}: 'bbox' must be [x, y, w, h], got {_short(bbox)}")
        if not _is_number(ann.get("area")):
            problems.append(f"{where}: 'area' must be a number, got {_short(ann.get('area'))}")
        seg = ann.get("segmentation")
        problem = (
            segmentation_problem(seg) if isinstance(seg, dict) else "'segmentation' must be an RLE"
        )
        if problem is not None:
            problems.append(f"{where}: {problem}")
    if problems:
        raise DatasetError(f"{path}: malformed SA-1B annotation file: {_first(problems)}")
    return image, anns

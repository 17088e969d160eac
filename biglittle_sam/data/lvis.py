"""LVIS v1 (``lvis_v1_val.json``), whose images are COCO's, found through each image's ``coco_url``.

LVIS val images come from COCO train2017 and val2017. ``coco_url`` ends in ``<split>/<file>``, for
example ``http://images.cocodataset.org/train2017/000000391895.jpg``; the file is looked up as
``<image_root>/<split>/<file>``, or as ``<image_root>/<file>`` when ``image_root`` is itself the
split folder. LVIS has no crowd annotations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from .coco import CocoDataset
from .records import PathLike

__all__ = ["LvisDataset"]


class LvisDataset(CocoDataset):
    """LVIS instance annotations over a COCO image root holding ``train2017/`` and ``val2017/``."""

    kind = "lvis"
    flavor = "lvis"

    def __init__(
        self,
        annotation_file: PathLike,
        image_root: PathLike,
        min_area: float = 1.0,
        require_instances: bool = True,
        limit: Optional[int] = None,
    ) -> None:
        """
        Arguments:
          annotation_file: ``lvis_v1_val.json``.
          image_root: the folder holding ``train2017/`` and ``val2017/`` (or one of them).
          min_area: annotations with a smaller ``area`` are skipped and counted.
          require_instances: list only images with at least one annotation.
          limit: keep only the first ``limit`` images (in id order).
        """
        super().__init__(
            annotation_file,
            image_root,
            include_crowd=True,
            min_area=min_area,
            require_instances=require_instances,
            limit=limit,
        )

    def image_path(self, img: Dict[str, Any]) -> Path:
        url = img.get("coco_url")
        if isinstance(url, str) and "/" in url.rstrip("/"):
            split, name = url.rstrip("/").split("/")[-2:]
        else:
            split, name = "", Path(str(img["file_name"])).name
        nested = self.image_root / split / name if split else self.image_root / name
        if nested.is_file():
            return nested
        flat = self.image_root / name
        return flat if flat.is_file() else nested

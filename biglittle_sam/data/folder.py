"""A plain folder of images, for checks that need no annotations (embedding fidelity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .errors import DatasetError
from .records import EvalDataset, ImageRecord, PathLike, apply_limit, read_image

__all__ = ["ImageFolder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder(EvalDataset):
    """The image files directly inside ``root`` (by suffix, case-insensitive), in name order."""

    kind = "folder"

    def __init__(self, root: PathLike, limit: Optional[int] = None) -> None:
        """
        Arguments:
          root: the folder; sub-folders are not searched.
          limit: keep only the first ``limit`` files.
        """
        self.root = Path(root)
        if not self.root.is_dir():
            if self.root.exists():
                raise DatasetError(f"{self.root}: not a folder (an image folder is expected)")
            raise DatasetError(f"{self.root}: image folder not found")
        try:
            files = sorted(
                p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        except OSError as e:  # no permission to list it, or an I/O error
            raise DatasetError(
                f"{self.root}: cannot read the image folder ({e.strerror or e})"
            ) from None
        if not files:
            raise DatasetError(
                f"{self.root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"
            )
        self.files: List[Path] = apply_limit(files, limit)

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "images": str(self.root)}

    def record(self, index: int) -> ImageRecord:
        path = self.files[index]
        return ImageRecord(
            index=index, image_id=path.name, file_name=path.name, path=path, height=0, width=0
        )

    def load_image(self, record: ImageRecord) -> np.ndarray:
        """H x W x 3 uint8 RGB; there is no annotation to check the size against."""
        return read_image(record.path, record.image_id)

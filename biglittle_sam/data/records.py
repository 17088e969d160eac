"""What every evaluation loader yields: image records with their instances, and the image reader.

A loader keeps only annotations in memory. Pixels are read one image at a time by
:func:`read_image`, when the evaluation reaches that image, so a dataset of any size streams.
"""

from __future__ import annotations

import abc
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, TypeVar, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DatasetError  # re-exported: loaders and callers import it from here too
from .masks import decode_rle, segmentation_to_rle

__all__ = [
    "DatasetError",
    "ImageProblem",
    "ImageProblemError",
    "Instance",
    "ImageRecord",
    "EvalDataset",
    "read_image",
    "check_image_size",
    "stable_key",
]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ImageProblem:
    """An image that was skipped, and why (written to the evaluation output).

    ``reason`` is one of ``missing`` (no such file), ``corrupt`` (the file does not decode),
    ``size_mismatch`` (the pixels or an annotation disagree with the recorded image size).
    """

    image_id: Any
    file: str
    reason: str
    detail: str

    def as_dict(self) -> Dict[str, Any]:
        return {
            "image_id": self.image_id,
            "file": self.file,
            "reason": self.reason,
            "detail": self.detail,
        }


class ImageProblemError(Exception):
    """Raised for one image that cannot be evaluated; carries the :class:`ImageProblem`."""

    def __init__(self, problem: ImageProblem) -> None:
        super().__init__(f"{problem.file}: {problem.reason}: {problem.detail}")
        self.problem = problem


@dataclass(frozen=True)
class Instance:
    """One ground-truth object of an image.

    ``segmentation`` is kept exactly as the annotation file stores it (polygons, uncompressed RLE or
    compressed RLE) and only turned into a mask by :meth:`rle` / :meth:`mask` when it is evaluated.
    """

    ann_id: Any
    bbox: Tuple[float, float, float, float]  # x, y, w, h in pixels, as in COCO
    area: float  # the annotation's own area field; used for the small/medium/large split
    segmentation: Any
    iscrowd: int = 0
    category_id: Optional[int] = None
    height: int = 0  # image height the segmentation refers to
    width: int = 0  # image width the segmentation refers to
    where: str = ""  # "file: annotation id N", for error messages

    def rle(self) -> Dict[str, Any]:
        """The segmentation as one compressed RLE dict (``{"size": [h, w], "counts": bytes}``)."""
        return segmentation_to_rle(self.segmentation, self.height, self.width, self.where)

    def mask(self) -> np.ndarray:
        """The ground-truth mask, H x W bool."""
        return decode_rle(self.rle(), self.where)


@dataclass
class ImageRecord:
    """One image of a dataset, its instances, and the annotations the loader left out.

    ``skipped`` counts annotations dropped by the loader's rules for this image, for example
    ``{"area<1": 1, "crowd": 2}``; the evaluation sums these over the images it evaluates.
    ``issues`` lists the annotations that were skipped or changed because they were unusable
    (a box not finite or off the image, an empty polygon), one JSON-ready dict each.
    """

    index: int  # position in the dataset (after --limit); results are ordered by it
    image_id: Any
    file_name: str
    path: Path
    height: int
    width: int
    instances: List[Instance] = field(default_factory=list)
    skipped: Dict[str, int] = field(default_factory=dict)
    issues: List[Dict[str, Any]] = field(default_factory=list)


class EvalDataset(abc.ABC):
    """The interface every evaluation loader implements.

    ``len(dataset)`` images; ``dataset.record(i)`` returns the :class:`ImageRecord` of image ``i``
    (reading per-image annotation files where the format has them, never pixels);
    ``dataset.load_image(record)`` reads the pixels and checks them against the record.
    """

    kind: str = "dataset"

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images (after ``limit``)."""

    @abc.abstractmethod
    def record(self, index: int) -> ImageRecord:
        """Image ``index`` with its instances (never its pixels)."""

    def describe(self) -> Dict[str, Any]:
        """What the output records about this dataset (kind, paths, options)."""
        return {"kind": self.kind}

    def load_image(self, record: ImageRecord) -> np.ndarray:
        """The image of ``record`` as H x W x 3 uint8 RGB; raises :class:`ImageProblemError`."""
        image = read_image(record.path, record.image_id)
        check_image_size(record, image)
        return image


def read_image(path: PathLike, image_id: Any = None) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB.

    PIL is used, without applying EXIF orientation, as the published SAM evaluations do
    (``Image.open(path).convert("RGB")``), so pixels line up with COCO's annotations. Grayscale and
    RGBA files are converted to RGB.

    Raises:
      ImageProblemError: ``missing`` when the file does not exist, ``corrupt`` when it does not
        decode (truncated, not an image, unreadable).
    """
    p = Path(path)
    if not p.is_file():
        raise ImageProblemError(ImageProblem(image_id, str(p), "missing", "no such image file"))
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageProblemError(ImageProblem(image_id, str(p), "corrupt", detail)) from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageProblemError(
            ImageProblem(image_id, str(p), "corrupt", f"decoded to shape {array.shape}")
        )
    return np.ascontiguousarray(array)


def check_image_size(record: ImageRecord, image: np.ndarray) -> None:
    """Raise a ``size_mismatch`` :class:`ImageProblemError` unless pixels and annotations agree.

    The image must be ``record.height`` x ``record.width``, and every instance's segmentation must
    refer to that size.
    """
    h, w = image.shape[:2]
    if (h, w) != (record.height, record.width):
        raise ImageProblemError(
            ImageProblem(
                record.image_id,
                str(record.path),
                "size_mismatch",
                f"image is {w}x{h} (w x h) but the annotations say {record.width}x{record.height}",
            )
        )
    for inst in record.instances:
        if (inst.height, inst.width) != (h, w):
            raise ImageProblemError(
                ImageProblem(
                    record.image_id,
                    str(record.path),
                    "size_mismatch",
                    f"annotation {inst.ann_id} has a segmentation of size "
                    f"{inst.width}x{inst.height} (w x h) but the image is {w}x{h}",
                )
            )


T = TypeVar("T")


def apply_limit(items: List[T], limit: Optional[int]) -> List[T]:
    """The first ``limit`` items (all when ``limit`` is None); a negative limit is a ValueError."""
    if limit is None:
        return items
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return items[:limit]


def stable_key(value: Any) -> int:
    """A non-negative integer for an id, the same in every process (seeds per-instance RNGs).

    Non-negative ints are used as they are; anything else (strings, negative numbers) is hashed
    with CRC-32 of its ``repr``, which, unlike ``hash``, does not change between processes.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return zlib.crc32(repr(value).encode("utf-8"))

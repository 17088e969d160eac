"""Segmentations in COCO's three forms, checked and converted through ``pycocotools.mask``.

- polygons: ``[[x1, y1, x2, y2, ...], ...]``, rasterized by pycocotools and merged into one mask;
- uncompressed RLE: ``{"size": [h, w], "counts": [int, ...]}`` (COCO's crowd annotations);
- compressed RLE: ``{"size": [h, w], "counts": "string"}`` (SA-1B, and results files).

:func:`segmentation_problem` checks the structure when a file is loaded, so a malformed annotation
is reported with its file and id instead of failing deep inside pycocotools.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .errors import DatasetError, _as_int, _is_number, _short

__all__ = [
    "segmentation_problem",
    "segmentation_size",
    "segmentation_to_rle",
    "decode_rle",
    "encode_mask",
    "rle_area",
    "rle_bbox",
]


def segmentation_problem(seg: Any) -> Optional[str]:
    """What is wrong with a segmentation's structure, or None when it is usable.

    Polygon parts with fewer than 3 points are allowed (they cover no pixel and are dropped), but
    every part must be a flat list of an even number of numbers.
    """
    if isinstance(seg, list):
        if not seg:
            return "'segmentation' is an empty polygon list"
        for j, part in enumerate(seg):
            if not isinstance(part, list) or not all(_is_number(v) for v in part):
                return (
                    f"polygon {j} must be a flat list of numbers [x1, y1, x2, y2, ...], "
                    f"got {_short(part)}"
                )
            if len(part) % 2:
                return f"polygon {j} has an odd number of coordinates ({len(part)})"
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or any(_as_int(v) is None or _as_int(v) < 0 for v in size)
        ):
            return (
                f"RLE 'size' must be [height, width] with two non-negative ints, got {_short(size)}"
            )
        h, w = (_as_int(v) for v in size)
        if isinstance(counts, (str, bytes)):
            return None
        if isinstance(counts, list):
            ints = [_as_int(c) for c in counts]
            if any(c is None or c < 0 for c in ints):
                return "uncompressed RLE 'counts' must be a list of non-negative ints"
            total = sum(c for c in ints if c is not None)
            if total != h * w:
                return (
                    f"uncompressed RLE 'counts' add up to {total} pixels but 'size' {h}x{w} "
                    f"has {h * w}"
                )
            return None
        return f"RLE 'counts' must be a string (compressed) or a list of ints, got {_short(counts)}"
    return (
        "'segmentation' must be a list of polygons or an RLE dict {'size': [h, w], 'counts': ...}, "
        f"got {type(seg).__name__}"
    )


def segmentation_size(seg: Any, height: int, width: int) -> Tuple[int, int]:
    """The (height, width) a segmentation refers to: its RLE ``size``, or the image's (polygons)."""
    if isinstance(seg, dict):
        h, w = seg["size"]
        return int(h), int(w)
    return int(height), int(width)


def segmentation_to_rle(seg: Any, height: int, width: int, where: str = "") -> Dict[str, Any]:
    """Any COCO segmentation as one compressed RLE dict ``{"size": [h, w], "counts": bytes}``.

    Arguments:
      seg: polygons, uncompressed RLE or compressed RLE (already checked by
        :func:`segmentation_problem`).
      height, width: the image size polygons are rasterized at.
      where: "file: annotation id N", put in front of any error.
    """
    from pycocotools import mask as mask_utils  # lazy: pycocotools is optional (extra "eval")

    try:
        if isinstance(seg, list):
            # Parts under 3 points cover nothing; pycocotools would read a 4-number part as a box.
            parts = [[float(v) for v in p] for p in seg if len(p) >= 6]
            if not parts:
                return encode_mask(np.zeros((height, width), dtype=bool), as_text=False)
            return mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
        h, w = (int(v) for v in seg["size"])
        counts = seg["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects(
                {"size": [h, w], "counts": [int(c) for c in counts]}, h, w
            )
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": [h, w], "counts": counts}
    except (ValueError, TypeError, UnicodeEncodeError, KeyError) as e:
        raise DatasetError(f"{where}: segmentation does not convert to a mask: {e}") from None


def decode_rle(rle: Dict[str, Any], where: str = "") -> np.ndarray:
    """Decode a compressed RLE dict into an H x W bool mask (C order).

    Raises:
      DatasetError: prefixed with ``where``, when the counts do not describe an H x W mask.
    """
    from pycocotools import mask as mask_utils  # lazy: pycocotools is optional (extra "eval")

    try:
        with warnings.catch_warnings():
            # pycocotools builds its output with numpy 1 semantics; numpy 2 warns about it.
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.ascontiguousarray(mask_utils.decode(rle).astype(bool))
    except ValueError as e:
        raise DatasetError(
            f"{where or 'RLE'}: segmentation does not decode to a mask: {e}"
        ) from None


def encode_mask(mask: np.ndarray, as_text: bool = True) -> Dict[str, Any]:
    """Compressed RLE of an H x W bool mask; ``counts`` is a str when ``as_text`` (JSON-ready)."""
    from pycocotools import mask as mask_utils  # lazy: pycocotools is optional (extra "eval")

    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects an H x W mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if as_text:
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_area(rle: Dict[str, Any]) -> int:
    """Number of pixels in an RLE mask."""
    from pycocotools import mask as mask_utils  # lazy: pycocotools is optional (extra "eval")

    return int(mask_utils.area(_bytes_counts(rle)))


def rle_bbox(rle: Dict[str, Any]) -> list:
    """Tight [x, y, w, h] box of an RLE mask (all zeros for an empty mask)."""
    from pycocotools import mask as mask_utils  # lazy: pycocotools is optional (extra "eval")

    return [float(v) for v in mask_utils.toBbox(_bytes_counts(rle))]


def _bytes_counts(rle: Dict[str, Any]) -> Dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, str):
        return {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return rle

"""Downloads: the selected mask, or every segment-everything mask, as a PNG and a COCO RLE json at
the uploaded image's size."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from ..data.masks import encode_mask
from ..fileio import atomic_open, atomic_write_json
from .session import DemoSession

__all__ = ["export_masks", "masks_to_export"]


def masks_to_export(session: DemoSession) -> Tuple[List[np.ndarray], List[float]]:
    """(masks H x W bool, predicted IoUs): the selected mask, else the segment-everything masks,
    else none."""
    if session.prediction is not None:
        i = min(session.choice, len(session.prediction.masks) - 1)
        return [session.prediction.masks[i]], [float(session.prediction.scores[i])]
    if session.everything:
        return (
            [m["segmentation"] for m in session.everything],
            [float(m["predicted_iou"]) for m in session.everything],
        )
    return [], []


def _to_original(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """An h x w mask at the (H, W) of the uploaded file (nearest neighbour)."""
    if mask.shape == size:
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), cv2.INTER_NEAREST)
    return resized > 0


def _annotation(index: int, mask: np.ndarray, score: float) -> Dict[str, Any]:
    ys, xs = np.nonzero(mask)
    bbox = [0, 0, 0, 0]
    if len(xs):
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1)]  # fmt: skip
    return {
        "id": index,
        "image_id": 1,
        "category_id": 1,
        "segmentation": encode_mask(mask),
        "area": int(mask.sum()),
        "bbox": bbox,
        "iscrowd": 0,
        "score": round(float(score), 4),
    }


def export_masks(
    session: DemoSession, model_name: str, keep_ratio: float, root: Optional[Path] = None
) -> Tuple[List[Path], str]:
    """Write the masks of :func:`masks_to_export` as ``<image>_mask.png`` (one mask: 0 / 255; more:
    a label map, 0 background and i for mask i) and ``<image>_mask_rle.json`` (COCO RLE).

    The files go to a fresh folder inside the session's workspace under ``root``, and the previous
    download's folder is removed, so a session keeps one download on disk. Returns ([png, json],
    what was written), or ([], "") when there is no mask.
    """
    masks, scores = masks_to_export(session)
    if not masks or session.image is None:
        return [], ""
    image = session.image
    height, width = image.original_size
    full = [_to_original(m, (height, width)) for m in masks]
    if len(full) == 1:
        png = full[0].astype(np.uint8) * 255
    else:  # a label map: 0 background, i for mask i (largest first, later ones on top)
        png = np.zeros((height, width), np.uint16 if len(full) > 255 else np.uint8)
        for i, m in enumerate(full, start=1):
            png[m] = i
    document = {
        "info": {"model": model_name, "keep_ratio": keep_ratio, "source": "biglittle-sam demo"},
        "images": [{"id": 1, "file_name": image.name, "height": height, "width": width}],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [
            _annotation(i, m, s) for i, (m, s) in enumerate(zip(full, scores), start=1)
        ],
    }
    workspace = session.workspace(root)
    for old in workspace.iterdir():  # the previous download: its links are gone from the page
        shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="download-", dir=workspace))
    png_path = folder / f"{image.name}_mask.png"
    json_path = folder / f"{image.name}_mask_rle.json"
    with atomic_open(png_path) as f:
        Image.fromarray(png).save(f, format="PNG")
    atomic_write_json(json_path, document)
    what = "mask" if len(full) == 1 else f"{len(full)} masks (PNG: label map)"
    return [png_path, json_path], f"{what} at {width} x {height}"

"""Mask AP from a detector's boxes: prompt SAM with each box, score the masks with ``COCOeval``.

The detections file is in COCO results format: a JSON list of ``{image_id, category_id, bbox:
[x, y, w, h], score}``. Each box becomes a box prompt; its mask inherits the detection's category
and score. Only the top ``max_detections`` boxes per image by score are prompted: ``COCOeval``
looks at no more than 100 per image anyway. Masks are scored with
``pycocotools.cocoeval.COCOeval(iouType="segm")`` over the evaluated images.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ..data.coco import CocoDataset, read_json_file
from ..data.errors import DatasetError, _first, _is_number, _numbers, _short
from ..data.masks import encode_mask
from ..data.records import ImageRecord, PathLike
from .predictor import MaskPredictor, PromptBatch
from .prompts import box_xywh_to_xyxy

__all__ = ["AP_NAMES", "load_detections", "predict_detection_masks", "coco_mask_ap"]

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
DETECTION_FORM = "a JSON list of {image_id, category_id, bbox: [x, y, w, h], score}"


def load_detections(
    path: PathLike, dataset: CocoDataset, max_per_image: int = 100
) -> Dict[Any, List[Dict[str, Any]]]:
    """Read and check a detections file against the annotation file it will be scored on.

    Returns:
      ``{image_id: [detection, ...]}`` with each image's detections sorted by score, highest
      first, and cut to ``max_per_image``.

    Raises:
      DatasetError: naming the file and the first malformed entries, with the expected form.
    """
    p = Path(path)
    data = read_json_file(p, f"detections file ({DETECTION_FORM})")
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected {DETECTION_FORM}, got a {type(data).__name__}")
    images = {img["id"] for img in dataset.data["images"]}
    categories = set(dataset.category_ids())
    problems: List[str] = []
    grouped: Dict[Any, List[Dict[str, Any]]] = {}
    for i, det in enumerate(data):
        where = f"[{i}]"
        if not isinstance(det, dict):
            problems.append(f"{where}: must be an object, got {type(det).__name__}")
            continue
        if det.get("image_id") not in images:
            problems.append(
                f"{where}: image_id {_short(det.get('image_id'))} is not an image of "
                f"{dataset.annotation_file.name}"
            )
            continue
        if det.get("category_id") not in categories:
            problems.append(
                f"{where}: category_id {_short(det.get('category_id'))} is not a category of "
                f"{dataset.annotation_file.name}"
            )
        bbox = det.get("bbox")
        if (
            not _numbers(bbox, 4)
            or not all(math.isfinite(float(v)) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            problems.append(
                f"{where}: 'bbox' must be [x, y, w, h] of finite numbers with w, h >= 0, "
                f"got {_short(bbox)}"
            )
        if not _is_number(det.get("score")) or not math.isfinite(float(det["score"])):
            problems.append(
                f"{where}: 'score' must be a number (finite), got {_short(det.get('score'))}"
            )
        grouped.setdefault(det["image_id"], []).append(det)
    if problems:
        raise DatasetError(
            f"{p}: malformed detections: {_first(problems)}; expected {DETECTION_FORM}"
        )
    for image_id, dets in grouped.items():
        dets.sort(key=lambda d: -float(d["score"]))  # stable: file order among equal scores
        grouped[image_id] = dets[:max_per_image]
    return grouped


def predict_detection_masks(
    predictor: MaskPredictor,
    record: ImageRecord,
    detections: Sequence[Dict[str, Any]],
    mask_choice: str = "best",
) -> List[Dict[str, Any]]:
    """One COCO result per detection, with the mask its box prompts (the image must be set).

    Returns:
      ``[{image_id, category_id, score, bbox, segmentation: compressed RLE}, ...]``.
    """
    if not detections:
        return []
    boxes = np.stack([box_xywh_to_xyxy(d["bbox"]) for d in detections])  # (D, 4)
    batch = PromptBatch(record.image_id, list(range(len(detections))), boxes=boxes)
    masks, _ = predictor.predict(batch, mask_choice)  # (D, H, W)
    return [
        {
            "image_id": record.image_id,
            "category_id": d["category_id"],
            "score": float(d["score"]),
            "bbox": [float(v) for v in d["bbox"]],
            "segmentation": encode_mask(mask),
        }
        for d, mask in zip(detections, masks)
    ]


def coco_mask_ap(
    coco_gt: Any, results: Sequence[Dict[str, Any]], image_ids: Sequence[Any]
) -> Dict[str, Any]:
    """Score mask results with ``COCOeval(iouType="segm")`` over ``image_ids``.

    The ``bbox`` of each result is dropped before loading, so the results' areas come from their
    masks (``loadRes`` would otherwise take the box area).

    Returns:
      ``{"AP": ..., "AP50": ..., ..., "ARl": ..., "summary": text}``, values x 100; None where
      ``COCOeval`` has nothing to score (-1), 0.0 everywhere when there are no results.
    """
    from pycocotools.cocoeval import COCOeval

    ids = list(image_ids)
    if not ids:
        raise DatasetError("mask AP: no image could be evaluated")
    if not results:
        return {**{name: 0.0 for name in AP_NAMES}, "summary": "no detections to score"}
    dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out: Dict[str, Any] = {}
    for name, value in zip(AP_NAMES, evaluator.stats):
        out[name] = None if value < 0 else float(value) * 100.0
    summary = [line for line in text.getvalue().splitlines() if "Average" in line]
    out["summary"] = "\n".join(summary)
    return out

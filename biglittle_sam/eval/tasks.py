"""The three tasks of an evaluation run, each over the shared image loop (``eval/loop.py``):
box / click mIoU, mask AP from detector boxes, and embedding fidelity against a teacher.

Each returns, on rank 0, the parts of the result it owns (``dataset``, ``models`` rows, its own
tables, and ``settings_extra`` for the settings block); None on the other ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..data.coco import CocoDataset
from ..data.records import EvalDataset, ImageRecord
from ..fidelity import embedding_fidelity, valid_embedding_size
from ..runtime.distributed import DistContext
from .engine import evaluate_image
from .loop import dataset_summary, encoder_ms, run_images
from .mask_ap import coco_mask_ap, load_detections, predict_detection_masks
from .metrics import summarize_ious
from .models import EvalModel
from .predictor import SamMaskPredictor
from .report import write_json
from .settings import EvalSettings, output_name

__all__ = ["run_miou", "run_mask_ap", "run_fidelity"]


def run_miou(
    settings: EvalSettings, dataset: EvalDataset, models: List[EvalModel], ctx: DistContext
) -> Optional[Dict[str, Any]]:
    """Box / click mIoU of every model on this rank's images, gathered on rank 0.

    Returns:
      On rank 0: ``dataset`` summary, ``models`` rows (with ``miou`` per setting and
      ``encoder_ms``), the ``instances`` table and per-instance ``ious`` (x 100) per model and
      setting, in dataset order. None on other ranks.
    """
    prompt = settings.prompt_settings
    names = prompt.setting_names

    def work(record: ImageRecord, image: np.ndarray) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "instances": [[i.ann_id, i.area, i.iscrowd, i.category_id] for i in record.instances],
            "ious": {},
            "enc_s": {},
        }
        for m in models:
            out["enc_s"][m.label] = m.predictor.set_image(image)
            ious = evaluate_image(m.predictor, record, prompt)
            out["ious"][m.label] = {k: v.tolist() for k, v in ious.items()}
        return out

    items = run_images(dataset, ctx, settings, work, lambda r: bool(r.instances), "mIoU")
    if items is None:
        return None
    table: Dict[str, List[Any]] = {
        k: [] for k in ("image_id", "ann_id", "area", "iscrowd", "category_id")
    }
    ious: Dict[str, Dict[str, List[float]]] = {m.label: {n: [] for n in names} for m in models}
    for it in items:
        if not it["evaluated"]:
            continue
        for ann_id, area, crowd, cat in it["instances"]:
            table["image_id"].append(it["image_id"])
            table["ann_id"].append(ann_id)
            table["area"].append(area)
            table["iscrowd"].append(crowd)
            table["category_id"].append(cat)
        for m in models:
            for n in names:
                ious[m.label][n].extend(it["ious"][m.label][n])
    rows = []
    for m in models:
        rows.append(
            {
                **m.describe(),
                "encoder_ms": encoder_ms(items, m.label),
                "miou": {n: summarize_ious(ious[m.label][n], table["area"]) for n in names},
            }
        )
    summary = dataset_summary(dataset, items)
    summary["instances"] = len(table["ann_id"])
    summary["include_crowd"] = bool(getattr(dataset, "include_crowd", True))
    return {
        "dataset": summary,
        "settings_extra": {"prompt": prompt.describe(), "setting_names": names},
        "models": rows,
        "instances": table,
        "ious": ious,
    }


def run_mask_ap(
    settings: EvalSettings, dataset: EvalDataset, models: List[EvalModel], ctx: DistContext
) -> Optional[Dict[str, Any]]:
    """Mask AP of every model from the detections' boxes (COCOeval on rank 0); None elsewhere."""
    if not isinstance(dataset, CocoDataset):
        raise ValueError("mask AP needs a COCO annotation file")
    if settings.detections is None:
        raise ValueError("mask AP needs a detections file (--detections)")
    detections = load_detections(settings.detections, dataset, settings.max_detections)
    choice = settings.prompt_settings.effective_mask_choice

    def work(record: ImageRecord, image: np.ndarray) -> Dict[str, Any]:
        out: Dict[str, Any] = {"results": {}, "enc_s": {}}
        dets = detections.get(record.image_id, [])
        for m in models:
            out["enc_s"][m.label] = m.predictor.set_image(image)
            out["results"][m.label] = predict_detection_masks(m.predictor, record, dets, choice)
        return out

    def needs_image(record: ImageRecord) -> bool:
        return bool(detections.get(record.image_id))

    items = run_images(dataset, ctx, settings, work, needs_image, "mask AP")
    if items is None:
        return None
    # Images without detections are still scored (their objects are misses); unreadable ones not.
    image_ids = [it["image_id"] for it in items if it["problem"] is None]
    coco_gt = dataset.to_coco_api()
    rows = []
    saved: Dict[str, str] = {}
    for m in models:
        results = [r for it in items if it["evaluated"] for r in it["results"][m.label]]
        rows.append(
            {
                **m.describe(),
                "encoder_ms": encoder_ms(items, m.label),
                "detections_scored": len(results),
                "mask_ap": coco_mask_ap(coco_gt, results, image_ids),
            }
        )
        if settings.save_masks:
            slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in m.label)
            path = Path(settings.out_dir) / f"{output_name(settings)}_{slug}_segm.json"
            write_json(path, results)
            saved[m.label] = str(path)
    summary = dataset_summary(dataset, items)
    summary["images_scored"] = len(image_ids)
    return {
        "dataset": summary,
        "settings_extra": {
            "mask_choice": choice,
            "detections": str(settings.detections),
            "saved_masks": saved,
        },
        "models": rows,
    }


def run_fidelity(
    settings: EvalSettings,
    dataset: EvalDataset,
    models: List[EvalModel],
    ctx: DistContext,
    teacher: EvalModel,
) -> Optional[Dict[str, Any]]:
    """Embedding MSE / cosine of every model against ``teacher``, per image and averaged."""
    for m in [teacher, *models]:
        if not isinstance(m.predictor, SamMaskPredictor):
            raise TypeError(f"embedding fidelity needs SAM models; {m.label} is not one")
    for m in models:
        if m.img_size != teacher.img_size:
            raise ValueError(
                f"student {m.label} takes {m.img_size} px inputs but teacher {teacher.label} takes "
                f"{teacher.img_size}; compare encoders of the same input size"
            )

    def embed(model: EvalModel, image: np.ndarray) -> Tuple[float, SamMaskPredictor]:
        predictor = model.predictor
        if not isinstance(predictor, SamMaskPredictor):  # checked above; narrows the type
            raise TypeError(f"{model.label} is not a SAM model")
        return predictor.set_image(image), predictor

    def work(record: ImageRecord, image: np.ndarray) -> Dict[str, Any]:
        out: Dict[str, Any] = {"fidelity": {}, "enc_s": {}}
        out["enc_s"][teacher.label], ref_predictor = embed(teacher, image)
        reference = ref_predictor.embedding().clone()  # (1, C, g, g)
        valid = valid_embedding_size(
            ref_predictor.input_size, teacher.img_size, int(reference.shape[-1])
        )
        for m in models:
            out["enc_s"][m.label], predictor = embed(m, image)
            mse, cosine = embedding_fidelity(predictor.embedding(), reference, valid)
            out["fidelity"][m.label] = {"mse": mse, "cosine": cosine}
        out["valid"] = list(valid)
        return out

    items = run_images(dataset, ctx, settings, work, lambda r: True, "fidelity")
    if items is None:
        return None
    done = [it for it in items if it["evaluated"]]
    rows = []
    per_image: Dict[str, Dict[str, List[float]]] = {}
    for m in models:
        mse = [it["fidelity"][m.label]["mse"] for it in done]
        cos = [it["fidelity"][m.label]["cosine"] for it in done]
        per_image[m.label] = {"mse": mse, "cosine": cos}
        rows.append(
            {
                **m.describe(),
                "encoder_ms": encoder_ms(items, m.label),
                "fidelity": {
                    "mse": float(np.mean(mse)) if mse else None,
                    "cosine": float(np.mean(cos)) if cos else None,
                },
            }
        )
    return {
        "dataset": dataset_summary(dataset, items),
        "settings_extra": {},
        "teacher": {**teacher.describe(), "encoder_ms": encoder_ms(items, teacher.label)},
        "models": rows,
        "images": [it["image_id"] for it in done],
        "per_image": per_image,
    }

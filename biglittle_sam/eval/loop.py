"""The image loop every task shares: the dataset a run names, this rank's share of its images
(each read once), the items gathered on rank 0, and the summaries made from them.

An item is one dict per image: ``index``, ``image_id``, ``file``, ``skipped`` (annotations left
out, by reason), ``issues``, ``problem`` (why the image could not be read, or None),
``evaluated``, ``warmup`` (the rank's first evaluated image), and whatever the task's ``work``
returns for it (``enc_s``: encoder seconds per model label, and the task's scores).
"""

from __future__ import annotations

import statistics
import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..data.coco import CocoDataset
from ..data.folder import ImageFolder
from ..data.lvis import LvisDataset
from ..data.records import DatasetError, EvalDataset, ImageProblemError, ImageRecord
from ..data.sa1b import SA1BDataset
from ..runtime.distributed import DistContext
from ..runtime.progress import Progress
from .settings import EvalSettings

__all__ = [
    "Work",
    "build_dataset",
    "dataset_summary",
    "encoder_ms",
    "given_value",
    "run_images",
    "warn_annotation_issues",
]


def given_value(value: Optional[str], flag: str) -> str:
    """``value``, or ValueError naming ``flag`` when it is empty."""
    if not value:
        raise ValueError(f"{flag} is needed")
    return value


def build_dataset(settings: EvalSettings) -> EvalDataset:
    """The dataset a resolved ``settings`` names."""
    s = settings
    images = given_value(s.images, "--images")
    if s.dataset == "coco":
        return CocoDataset(
            given_value(s.annotations, "--annotations"),
            images,
            include_crowd=s.effective_include_crowd,
            min_area=s.min_area,
            require_instances=s.task == "miou",
            limit=s.limit,
        )
    if s.dataset == "lvis":
        annotations = given_value(s.annotations, "--annotations")
        return LvisDataset(annotations, images, min_area=s.min_area, limit=s.limit)
    if s.dataset == "sa1b":
        return SA1BDataset(
            images,
            instances_per_image=s.sa1b_instances,
            seed=s.seed,
            image_list=s.image_list,
            min_area=s.min_area,
            limit=s.limit,
        )
    return ImageFolder(images, limit=s.limit)


# A task's work on one image: (record, HxWx3 uint8 RGB image) -> the item's task fields.
Work = Callable[[ImageRecord, np.ndarray], Dict[str, Any]]


def run_images(
    dataset: EvalDataset,
    ctx: DistContext,
    settings: EvalSettings,
    work: Work,
    needs_image: Callable[[ImageRecord], bool],
    desc: str,
) -> Optional[List[Dict[str, Any]]]:
    """Run ``work`` on this rank's images (those ``needs_image`` accepts are read) and gather the
    items of every rank on rank 0, in dataset order; None on the other ranks."""
    indices = ctx.shard(len(dataset))
    progress = Progress(len(indices), desc=desc, enabled=settings.progress and ctx.is_main)
    items: List[Dict[str, Any]] = []
    first = True
    try:
        for index in indices:
            record = dataset.record(index)
            item: Dict[str, Any] = {
                "index": index,
                "image_id": record.image_id,
                "file": record.file_name,
                "skipped": dict(record.skipped),
                "issues": list(record.issues),
                "problem": None,
                "evaluated": False,
                "warmup": False,
            }
            if needs_image(record):
                try:
                    image = dataset.load_image(record)
                except ImageProblemError as e:
                    if settings.strict:
                        raise DatasetError(
                            f"{e} (stopped by --strict; without it the image is skipped and "
                            "listed in the output)"
                        ) from None
                    item["problem"] = e.problem.as_dict()
                else:
                    item.update(work(record, image))
                    item["evaluated"] = True
                    item["warmup"] = first
                    first = False
            items.append(item)
            progress.update()
    finally:
        progress.close()
    gathered = ctx.gather(items)
    if gathered is None:
        return None
    return _merge(gathered)


def _merge(gathered: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """The items of every rank in one list, in dataset order."""
    items = [item for part in gathered for item in part]
    items.sort(key=lambda it: it["index"])
    return items


def encoder_ms(items: List[Dict[str, Any]], label: str) -> Dict[str, Any]:
    """Mean and median encoder time; each process's first image is a warm-up and left out."""
    timed = [it for it in items if it["evaluated"] and label in it.get("enc_s", {})]
    steady = [it for it in timed if not it["warmup"]] or timed
    ms = [it["enc_s"][label] * 1000.0 for it in steady]
    return {
        "mean": float(np.mean(ms)) if ms else None,
        "median": float(statistics.median(ms)) if ms else None,
        "n": len(ms),
        "warmup_excluded": len(timed) - len(steady),
    }


def dataset_summary(dataset: EvalDataset, items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The ``dataset`` block of the output: what was read, skipped and clipped, and why."""
    skipped_anns: Dict[str, int] = {}
    for it in items:
        for k, v in it["skipped"].items():
            skipped_anns[k] = skipped_anns.get(k, 0) + v
    problems = [it["problem"] for it in items if it["problem"] is not None]
    by_reason: Dict[str, int] = {}
    for p in problems:
        by_reason[p["reason"]] = by_reason.get(p["reason"], 0) + 1
    issues = [issue for it in items for issue in it.get("issues", [])]
    return {
        **dataset.describe(),
        "images_listed": len(items),
        "images_evaluated": sum(1 for it in items if it["evaluated"]),
        "skipped_images": problems,
        "skipped_images_by_reason": by_reason,
        "skipped_annotations": skipped_anns,
        "boxes_clipped": sum(1 for issue in issues if issue["action"] == "clipped"),
        "annotation_issues": issues,
    }


def warn_annotation_issues(summary: Dict[str, Any]) -> None:
    """One warning when annotations were clipped or skipped as unusable (listed in the output)."""
    issues = summary.get("annotation_issues") or []
    if not issues:
        return
    by_reason: Dict[str, int] = {}
    for issue in issues:
        key = f"{issue['action']} ({issue['reason']})"
        by_reason[key] = by_reason.get(key, 0) + 1
    counts = ", ".join(f"{n} {key}" for key, n in sorted(by_reason.items()))
    warnings.warn(
        f"{len(issues)} unusable annotations: {counts}; each is listed under "
        "dataset.annotation_issues in the output JSON",
        stacklevel=2,
    )

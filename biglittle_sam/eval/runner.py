"""One evaluation run: settings in, results (JSON, markdown, PNG) out.

Three tasks share one loop over images: each image is read once, each model encodes it once, and
every prompt of every setting reuses that embedding.

- ``miou``: box and click prompts from ground truth on COCO, LVIS or SA-1B; per-instance IoU and
  mIoU by object size.
- ``ap``: box prompts from a detections file; COCO mask AP.
- ``fidelity``: student vs teacher embeddings on an image folder; MSE and cosine similarity.

Under ``torchrun`` the images are sharded over the processes and the results gathered on rank 0,
which alone writes the outputs; the numbers are those of a single-process run. On CPU that holds
bit for bit when every process uses the same number of threads (torchrun gives each worker
OMP_NUM_THREADS=1; pass ``threads=1`` / ``--threads 1`` to the single-process run), because
matrix products sum in a thread-dependent order.

    from biglittle_sam.eval import EvalSettings, run_evaluation
    result = run_evaluation(EvalSettings(
        annotations="instances_val2017.json", images="val2017",
        models=("vit_b=sam_vit_b_01ec64.pth", "bl_b=bl_b.pth@0.25")))
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..data.coco import CocoDataset
from ..data.folder import ImageFolder
from ..data.lvis import LvisDataset
from ..data.records import DatasetError, EvalDataset, ImageProblemError, ImageRecord
from ..data.sa1b import SA1BDataset
from ..fidelity import embedding_fidelity, valid_embedding_size
from ..runtime.distributed import DistContext, init_distributed
from ..runtime.progress import Progress
from .engine import PromptSettings, evaluate_image
from .mask_ap import coco_mask_ap, load_detections, predict_detection_masks
from .metrics import summarize_ious
from .models import EvalModel, build_eval_models
from .predictor import SamMaskPredictor
from .report import PLOT_X, write_json, write_outputs

__all__ = [
    "TASKS",
    "DATASETS",
    "EvalSettings",
    "build_dataset",
    "run_evaluation",
    "run_miou",
    "run_mask_ap",
    "run_fidelity",
]

TASKS = ("miou", "ap", "fidelity")
DATASETS = ("coco", "lvis", "sa1b", "folder")
FORMAT_NAME = "biglittle-sam-eval"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EvalSettings:
    """Everything a run needs. These defaults are the only defaults (the CLI passes given flags)."""

    models: Tuple[str, ...] = ()  # --model specs: NAME[=CHECKPOINT][@KEEP_RATIO]
    task: Optional[str] = None  # None: "ap" with detections, "fidelity" with a teacher, else "miou"
    dataset: Optional[str] = None  # None: lvis/coco from the annotation file name, sa1b from files
    annotations: Optional[str] = None  # COCO / LVIS json
    images: Optional[str] = None  # image folder (COCO: val2017/; LVIS: the COCO root; SA-1B folder)
    detections: Optional[str] = None  # COCO results json with boxes (task "ap")
    teacher: Optional[str] = None  # model spec of the teacher encoder (task "fidelity")
    prompts: Tuple[str, ...] = ("box", "click")  # the published rows report both
    clicks: Tuple[int, ...] = (1, 3, 5)  # click counts of the published tables
    protocol: str = "evit"  # EfficientViT-SAM's protocol; "edgesam" is the alternative
    mask_choice: Optional[str] = None  # None: the protocol's ("best" evit, "single" edgesam)
    include_crowd: Optional[bool] = None  # None: the protocol's (evit keeps crowd, edgesam drops)
    min_area: float = 1.0  # annotations below this area are skipped and counted, as published
    sa1b_instances: Optional[int] = None  # sample this many instances per SA-1B image (SA-1K: 64)
    image_list: Optional[str] = None  # SA-1B held-out image list, one name per line
    max_detections: int = 100  # COCOeval's own cap per image
    seed: int = 0  # instance sampling, random clicks, and weights a checkpoint does not hold
    limit: Optional[int] = None  # evaluate only the first N images
    strict: bool = False  # stop at the first missing / corrupt / mismatched image
    device: str = "auto"  # CUDA when available
    threads: Optional[int] = None  # torch CPU threads per process; None keeps torch's choice
    out_dir: str = "outputs/eval"  # where the JSON, markdown and PNG go
    name: Optional[str] = None  # output file stem; None: "<task>_<dataset>"
    plot_x: str = "latency"  # x axis of the plot: measured latency or analytic GMACs
    progress: bool = True  # progress bar on rank 0
    save_masks: bool = False  # task "ap": also write each model's COCO segm results json
    int8: bool = False  # the --model encoders in dynamic int8 (CPU); the --teacher stays fp32

    def resolved(self) -> "EvalSettings":
        """A copy with ``task`` and ``dataset`` filled in; ValueError for combinations that
        cannot work, naming the flag that is missing."""
        task = self.task
        if task is None:
            task = "ap" if self.detections else "fidelity" if self.teacher else "miou"
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        dataset = self.dataset
        if dataset is None:
            if task == "fidelity":
                dataset = "folder"
            elif self.annotations:
                dataset = "lvis" if "lvis" in Path(self.annotations).name.lower() else "coco"
            elif self.images and any(Path(self.images).glob("sa_*.json")):
                dataset = "sa1b"
            else:
                raise ValueError(
                    "cannot tell which dataset to read: give --annotations (COCO / LVIS json) "
                    "with --images, or --images pointing at an SA-1B folder, or --dataset"
                )
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if not self.images:
            raise ValueError(f"--images is needed (the {dataset} image folder)")
        if dataset in ("coco", "lvis") and not self.annotations:
            raise ValueError(f"--annotations is needed for {dataset} (the instance json)")
        if task == "ap":
            if dataset != "coco":
                raise ValueError(
                    f"mask AP is computed with pycocotools' COCOeval on COCO-format data; "
                    f"{dataset} is not supported (LVIS AP needs the lvis package's LVISEval)"
                )
            if not self.detections:
                raise ValueError("task 'ap' needs --detections (COCO results json with boxes)")
        if task == "fidelity" and not self.teacher:
            raise ValueError("task 'fidelity' needs --teacher NAME=CHECKPOINT")
        if task == "miou" and dataset == "folder":
            raise ValueError("task 'miou' needs annotations: use --dataset coco, lvis or sa1b")
        if self.plot_x not in PLOT_X:
            raise ValueError(f"plot_x must be one of {PLOT_X}, got {self.plot_x!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.int8 and self.device.startswith("cuda"):
            raise ValueError("--int8 runs on the CPU only: pass --device cpu")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        _ = self.prompt_settings  # ValueError for bad prompts, clicks, protocol or mask choice
        return dataclasses.replace(self, task=task, dataset=dataset)

    @property
    def prompt_settings(self) -> PromptSettings:
        return PromptSettings(
            prompts=tuple(self.prompts),
            clicks=tuple(self.clicks),
            protocol=self.protocol,
            mask_choice=self.mask_choice,
            seed=self.seed,
        )

    @property
    def effective_include_crowd(self) -> bool:
        if self.include_crowd is not None:
            return bool(self.include_crowd)
        return self.protocol == "evit"


def _given(value: Optional[str], flag: str) -> str:
    if not value:
        raise ValueError(f"{flag} is needed")
    return value


def build_dataset(settings: EvalSettings) -> EvalDataset:
    """The dataset a resolved ``settings`` names."""
    s = settings
    images = _given(s.images, "--images")
    if s.dataset == "coco":
        return CocoDataset(
            _given(s.annotations, "--annotations"),
            images,
            include_crowd=s.effective_include_crowd,
            min_area=s.min_area,
            require_instances=s.task == "miou",
            limit=s.limit,
        )
    if s.dataset == "lvis":
        annotations = _given(s.annotations, "--annotations")
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


Work = Callable[[ImageRecord, np.ndarray], Dict[str, Any]]


def _loop(
    dataset: EvalDataset,
    ctx: DistContext,
    settings: EvalSettings,
    work: Work,
    needs_image: Callable[[ImageRecord], bool],
    desc: str,
) -> List[Dict[str, Any]]:
    """Run ``work`` on this rank's images; one dict per image with its index and problems."""
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
    return items


def _merge(gathered: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    items = [item for part in gathered for item in part]
    items.sort(key=lambda it: it["index"])
    return items


def _encoder_ms(items: List[Dict[str, Any]], label: str) -> Dict[str, Any]:
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


def _dataset_summary(dataset: EvalDataset, items: List[Dict[str, Any]]) -> Dict[str, Any]:
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

    items = _loop(dataset, ctx, settings, work, lambda r: bool(r.instances), "mIoU")
    gathered = ctx.gather(items)
    if gathered is None:
        return None
    items = _merge(gathered)
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
                "encoder_ms": _encoder_ms(items, m.label),
                "miou": {n: summarize_ious(ious[m.label][n], table["area"]) for n in names},
            }
        )
    summary = _dataset_summary(dataset, items)
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

    items = _loop(dataset, ctx, settings, work, needs_image, "mask AP")
    gathered = ctx.gather(items)
    if gathered is None:
        return None
    items = _merge(gathered)
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
                "encoder_ms": _encoder_ms(items, m.label),
                "detections_scored": len(results),
                "mask_ap": coco_mask_ap(coco_gt, results, image_ids),
            }
        )
        if settings.save_masks:
            slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in m.label)
            path = Path(settings.out_dir) / f"{_name(settings)}_{slug}_segm.json"
            write_json(path, results)
            saved[m.label] = str(path)
    summary = _dataset_summary(dataset, items)
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

    items = _loop(dataset, ctx, settings, work, lambda r: True, "fidelity")
    gathered = ctx.gather(items)
    if gathered is None:
        return None
    items = _merge(gathered)
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
                "encoder_ms": _encoder_ms(items, m.label),
                "fidelity": {
                    "mse": float(np.mean(mse)) if mse else None,
                    "cosine": float(np.mean(cos)) if cos else None,
                },
            }
        )
    return {
        "dataset": _dataset_summary(dataset, items),
        "settings_extra": {},
        "teacher": {**teacher.describe(), "encoder_ms": _encoder_ms(items, teacher.label)},
        "models": rows,
        "images": [it["image_id"] for it in done],
        "per_image": per_image,
    }


def _name(settings: EvalSettings) -> str:
    return settings.name or f"{settings.task}_{settings.dataset}"


def run_evaluation(settings: EvalSettings) -> Optional[Dict[str, Any]]:
    """Run one evaluation and write its outputs.

    Returns:
      On rank 0, the result dict (also written as ``<out_dir>/<name>.json`` with ``.md`` and
      ``.png`` next to it); on other ranks, None.

    Raises:
      ValueError (including DatasetError, ModelSpecError, CheckpointError): for input a user can
      fix; the message names the file or flag and the expected form.
    """
    s = settings.resolved()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    ctx, device = init_distributed(s.device)
    try:
        start = time.perf_counter()
        dataset = build_dataset(s)
        models = build_eval_models(s.models, device, s.seed, s.int8)
        if s.task == "miou":
            partial = run_miou(s, dataset, models, ctx)
        elif s.task == "ap":
            partial = run_mask_ap(s, dataset, models, ctx)
        else:
            teacher_spec = _given(s.teacher, "--teacher")
            teacher = build_eval_models([teacher_spec], device, s.seed)[0]
            teacher.label = f"teacher {teacher.label}"
            partial = run_fidelity(s, dataset, models, ctx, teacher)
        if partial is None:
            return None
        warn_annotation_issues(partial["dataset"])
        wall = time.perf_counter() - start
        evaluated = partial["dataset"]["images_evaluated"]
        settings_out = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()
        }
        settings_out.update(partial.pop("settings_extra"))
        result: Dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "task": s.task,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings_out,
            "run": {
                "device": str(device),
                "world_size": ctx.world_size,
                "backend": ctx.backend,
                "torch": torch.__version__,
                "wall_s": wall,
                "images_per_s": evaluated / wall if wall > 0 else None,
            },
            **partial,
        }
        write_outputs(result, Path(s.out_dir), _name(s), s.plot_x)
        return result
    finally:
        ctx.close()

"""The proxy benchmark's stages: the teacher's fine-tuning, its embedding cache, distillation
phases 1 and 2, their training settings, and one row of an mIoU table.

Each function builds the settings of one tool (``finetune``, ``cache_teacher``, ``distill``,
``eval``) with the benchmark's values; the pipeline runs them through
:func:`biglittle_sam.train.launch.launch`, and :mod:`.proxy.recipes` writes them as recipe files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from biglittle_sam.checkpoint import (
    CheckpointError,
    atomic_save,
    checkpoint_config,
    read_checkpoint,
    split_checkpoint,
)
from biglittle_sam.config import SamViTConfig, config_to_dict
from biglittle_sam.data.shapes import ShapesDataset
from biglittle_sam.distill.cache import CacheSettings
from biglittle_sam.distill.distill import DistillSettings
from biglittle_sam.eval.runner import run_evaluation
from biglittle_sam.train.finetune import FinetuneSettings
from biglittle_sam.train.settings import TrainSettings

__all__ = [
    "cache_settings",
    "config_copy",
    "seeded_evaluation",
    "finished",
    "miou_row",
    "phase1_settings",
    "phase2_settings",
    "read_teacher",
    "stage_train",
    "teacher_settings",
    "training_run",
]


def stage_train(
    out: Path,
    steps: int,
    lr: float,
    batch_size: int,
    *,
    seed: int,
    device: str,
    num_workers: int,
    threads: int,
    progress: bool,
    resume: bool,
    keep_checkpoints: bool = False,
) -> TrainSettings:
    """The training settings of one stage: its budget, the run's seed, device, threads, resume;
    with ``keep_checkpoints``, each of its 4 checkpoints stays as ``step_<N>.pth``."""
    return TrainSettings(
        keep_checkpoints=keep_checkpoints,
        resume="auto" if resume else None,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        seed=seed,
        device=device,
        num_workers=num_workers,
        threads=threads,
        out_dir=str(out),
        checkpoint_every=max(steps // 4, 1),
        log_every=max(steps // 40, 1),
        progress=progress,
    )


def finished(result: Any, benchmark: str, stage: str) -> Path:
    """The model a training stage wrote; RuntimeError when the stage stopped early."""
    if result is None or not result.finished or result.model_path is None:
        step = getattr(result, "step", "?")
        raise RuntimeError(
            f"{benchmark} benchmark stage '{stage}' stopped at step {step} before finishing (a "
            "signal?); run the same command with --resume to continue from its checkpoint"
        )
    return Path(result.model_path)


def _coco(data: ShapesDataset) -> Tuple[str, str]:
    """(images folder, annotation file) of a shapes dataset written in COCO format."""
    if data.coco_images is None or data.coco_annotations is None:
        raise ValueError(f"{data.root}: the benchmarks need the shapes' COCO format")
    return str(data.coco_images), str(data.coco_annotations)


def teacher_settings(
    train: ShapesDataset,
    limit: int,
    overrides: Sequence[Tuple[str, Any]],
    focal_weight: float,
    stage: TrainSettings,
    max_instances: int = 8,
    refine_clicks: int = 2,
) -> FinetuneSettings:
    """``finetune`` of a ``vit_tiny`` teacher from scratch on the first ``limit`` images (each
    shapes image depends on its index alone), all parts, up to ``max_instances`` objects per image
    and ``refine_clicks`` correcting clicks after each first prompt."""
    images, annotations = _coco(train)
    return FinetuneSettings(
        images=images,
        annotations=annotations,
        model="vit_tiny",
        limit=limit,
        overrides=tuple(overrides),
        train_parts="all",
        max_instances=max_instances,
        refine_clicks=refine_clicks,
        focal_weight=focal_weight,
        train=stage,
    )


def cache_settings(
    train: ShapesDataset, cache_dir: Path, teacher: Path, device: str, progress: bool, resume: bool
) -> CacheSettings:
    """``cache-teacher`` of every training image; an old cache is removed unless ``resume``
    (a teacher trained again is another teacher)."""
    if cache_dir.exists() and not resume:
        shutil.rmtree(cache_dir)
    return CacheSettings(
        images=_coco(train)[0],
        out=str(cache_dir),
        teacher_checkpoint=str(teacher),
        device=device,
        batch_size=16,
        num_workers=0,
        progress=progress,
    )


def phase1_settings(
    train: ShapesDataset,
    cache_dir: Path,
    teacher: Path,
    little: Sequence[Tuple[str, Any]],
    keep_ratios: Sequence[float],
    parts: str,
    stage: TrainSettings,
) -> DistillSettings:
    """``distill`` phase 1 of a ``bl_tiny`` student that inherits from ``teacher``, on its cached
    embeddings; ``little``: the E-blocks' config fields, for example
    ``(("little_dim", 16), ("little_heads", 2))``."""
    return DistillSettings(
        cache=str(cache_dir),
        images=_coco(train)[0],
        student="bl_tiny",
        teacher_checkpoint=str(teacher),
        student_overrides=tuple(little),
        keep_ratios=tuple(keep_ratios),
        train_parts=parts,
        train=stage,
    )


def phase2_settings(
    base: DistillSettings,
    train: ShapesDataset,
    phase1: Path,
    stage: TrainSettings,
    **fields: Any,
) -> DistillSettings:
    """``distill`` phase 2 from the phase-1 checkpoint (which stores its config), on the teacher's
    masks of the training objects; ``fields``: other DistillSettings (keep_ratios, mask_weight...).
    """
    return dataclasses.replace(
        base,
        phase=2,
        annotations=_coco(train)[1],
        init_checkpoint=str(phase1),
        student_overrides=(),
        train=stage,
        **fields,
    )


def miou_row(
    variant: str, spec: str, ratio: Optional[float], model: Dict[str, Any], ious: Dict[str, Any]
) -> Dict[str, Any]:
    """One table row from an evaluation's model entry: box / 1 click / 3 clicks mIoU (all
    objects), GMACs and the per-object 1-click IoUs (for paired standard errors)."""
    miou = model["miou"]
    return {
        "model": variant,
        "keep_ratio": ratio,
        "gmacs": model.get("gmacs"),
        "box": miou["box"]["all"],
        "click1": miou["click1"]["all"],
        "click3": miou["click3"]["all"],
        "spec": spec,
        "click1_ious": ious[model["label"]]["click1"],
    }


def config_copy(model: Path, target: Path, note: str, **config: Any) -> Path:
    """A copy of a checkpoint with some config fields changed (same weights): the ablations."""
    payload = read_checkpoint(model)
    payload["config"] = dict(payload["config"], **config)
    payload["note"] = note
    return atomic_save(payload, target)


def read_teacher(source: Path, expected: SamViTConfig) -> Dict[str, Any]:
    """A trained teacher to use instead of training one, checked, as a checkpoint payload.

    The file must hold a plain SAM whose stored config equals ``expected`` (the run's geometry)
    in every field but its name. The payload's weights are fp32 (the built-in teacher is stored in
    fp16) and it records the source's path as ``adopted_from``, so written with
    :func:`~biglittle_sam.checkpoint.atomic_save` it gives the cache and the students what a
    trained teacher would.

    Raises:
      CheckpointError: the file is missing, unreadable, has no stored config, is a big.LITTLE
        model, or its config differs from ``expected`` (the fields are named).
    """
    state, meta = split_checkpoint(read_checkpoint(source), source)
    config = checkpoint_config(meta, state, source)
    if config is None:
        raise CheckpointError(
            f"{source}: no stored config; expected a teacher written by this project (a "
            "benchmark's <out-dir>/teacher/model.pth or biglittle_sam/assets/proxy_teacher.pth)"
        )
    have, want = config_to_dict(config), config_to_dict(expected)
    if set(have) != set(want):
        raise CheckpointError(
            f"{source}: a big.LITTLE model ('{config.name}'), expected a plain SAM teacher "
            f"('{expected.name}')"
        )
    wrong = [
        f"{k} {have[k]!r} (expected {v!r})" for k, v in want.items() if k != "name" and have[k] != v
    ]
    if wrong:
        raise CheckpointError(
            f"{source}: not a teacher of this run's geometry: {', '.join(wrong)}; train one with "
            "the same --geometry, or leave the teacher to the run"
        )
    payload = dict(meta)
    payload["model"] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    payload["adopted_from"] = str(source)
    return payload


def seeded_evaluation(settings: Any) -> Optional[Dict[str, Any]]:
    """``run_evaluation`` with torch's global RNG seeded per rank: random routing draws from it."""
    torch.manual_seed(settings.seed + int(os.environ.get("RANK", "0")))
    return run_evaluation(settings)


def training_run(previous: Path, resume: bool) -> Optional[Dict[str, Any]]:
    """With ``resume``, the command, wall time, stage times and hardware of the run that trained
    the reused stages (read from that run's result json, ``previous``), else None."""
    if not resume or not previous.is_file():
        return None
    try:
        prev = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if prev.get("trained_in"):
        return dict(prev["trained_in"])
    keys = ("created", "wall_s", "stage_s", "hardware")
    if not all(k in prev for k in keys):
        return None
    return {**{k: prev[k] for k in keys}, "command": prev.get("command", "")}

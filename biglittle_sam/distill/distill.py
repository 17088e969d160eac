"""Distilling a big.LITTLE student from its SAM teacher, through the shared training loop.

**Phase 1** (embeddings): the student's image embedding is pulled toward the cached teacher
embedding with MSE plus cosine distance over the valid (unpadded) region. Each step draws its keep
ratio from ``keep_ratios`` (default {0.1, 0.25, 0.5, 1.0}, the same on every rank), so one
checkpoint serves every operating point. By default only the E-blocks and routers train: the
student starts exactly at the teacher (inherited P-blocks, gamma 0) and has only to learn to stay
there when most tokens skip the big blocks.

**Phase 2** (prompt-in-the-loop, optional): boxes and points come from ground-truth masks; the
teacher's masks, from the cached teacher embedding through the teacher's frozen prompt encoder
and mask decoder, are the targets of the student's masks (BCE + Dice). An optional refinement
click, drawn from where student and teacher disagree, adds a second round. The embedding loss
stays on with its weights (set them to 0 for the mask loss alone).

**Dense students** (``student="dense"``, :mod:`.students`): a smaller plain encoder written by
``write_dense_student`` is the ``init_checkpoint``; both phases train its whole encoder
(``train_parts="encoder"``) as above, with no keep ratio and no router noise.

    from biglittle_sam.distill import DistillSettings, run_distillation
    from biglittle_sam.train import TrainSettings
    run_distillation(DistillSettings(
        cache="cache/vit_b", images="sa1b/", student="bl_b",
        teacher_checkpoint="sam_vit_b_01ec64.pth",
        train=TrainSettings(steps=20000, batch_size=64, lr=1e-3, out_dir="outputs/bl_b")))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from segment_anything.modeling import Sam

from ..checkpoint import CheckpointError, save_model_checkpoint
from ..config import BigLittleConfig, SamViTConfig, config_to_dict
from ..modeling import set_keep_ratio
from ..runtime.distributed import DistContext, init_distributed
from ..train.data import TrainImages, build_image_source, image_key, source_file_names
from ..train.loop import TrainResult, TrainTask, resolve_resume, run_training
from ..train.models import build_student, file_sha256, load_sam
from ..train.parts import parse_parts, select_trainable
from ..train.settings import fingerprint_settings, keep_ratio_for_step, settings_to_dict
from .cache import CacheError, TeacherCache
from .module import DistillModule, TeacherHeads, mask_distill_losses
from .routing import RouterExploration
from .settings import DEFAULT_KEEP_RATIOS, DISTILL_FREE_FIELDS, DistillSettings
from .students import DENSE, DENSE_KEY, dense_record, load_student

__all__ = [
    "DistillSettings",
    "DistillModule",
    "TeacherHeads",
    "build_distill_task",
    "run_distillation",
    "DEFAULT_KEEP_RATIOS",
    "mask_distill_losses",
]


def _teacher_identity(
    settings: DistillSettings, ctx: DistContext
) -> Tuple[Optional[str], Optional[str]]:
    """(path, SHA-256) of the teacher checkpoint named by the settings, or (None, None).

    Rank 0 reads the file (2.5 GB for ViT-H) and shares the checksum with the other ranks.
    """
    path = settings.teacher_checkpoint or settings.sam_checkpoint
    if path is None:
        return None, None
    if not Path(path).is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    return path, ctx.broadcast(file_sha256(path) if ctx.is_main else None)


def build_distill_task(
    settings: DistillSettings, ctx: DistContext, device: torch.device
) -> TrainTask:
    """Check everything a user can get wrong, then build the student, data and module.

    Raises (before any step or data read):
      CacheError: no cache, a cache made by another teacher, a student that does not fit the
        cache's embeddings, or an incomplete cache.
      CheckpointError / ValueError: a student that does not fit its SAM checkpoint, an init
        checkpoint that is not big.LITTLE, a plain image folder for phase 2, ...
    """
    s = settings
    cache = TeacherCache.open(s.cache)
    student, config, tag, dense = _student(s, cache, ctx)
    teacher_heads = _teacher_heads(s, config)
    dataset, info = _cached_dataset(s, cache, config)
    exploration: Optional[RouterExploration] = None
    if s.router_noise > 0:
        anneal = max(1, round(s.router_noise_anneal * s.train.steps))
        exploration = RouterExploration(student.image_encoder, s.router_noise, anneal)
    fingerprint = {
        "model_config": config_to_dict(config),
        "settings": fingerprint_settings(s, DISTILL_FREE_FIELDS),
        "teacher_sha256": cache.teacher.sha256,
        "dataset_size": len(dataset),
        **({DENSE_KEY: dense} if dense else {}),
    }
    return TrainTask(
        name="distill",
        sam=student,
        module=DistillModule(student, s, teacher_heads, exploration),
        dataset=dataset,
        config=config,
        teacher=tag,
        fingerprint=fingerprint,
        settings={**settings_to_dict(s), "data": info},
        recipe=settings_to_dict(s),
        begin_step=_step_schedule(s, student, exploration, dense is None),
        extra={
            "teacher_sha256": cache.teacher.sha256,
            "distill_phase": s.phase,
            **({DENSE_KEY: dense} if dense else {}),
        },
        lr_scales=((".router.", s.router_lr_scale),) if s.router_lr_scale != 1.0 else (),
    )


def _student(
    s: DistillSettings, cache: TeacherCache, ctx: DistContext
) -> Tuple[Sam, SamViTConfig, str, Optional[Dict[str, Any]]]:
    """The student, its config, its teacher tag and its ``dense_student`` record (None for
    big.LITTLE), checked against the cache, with the parts ``train_parts`` names set to train:
    from ``init_checkpoint``, or built from its SAM."""
    if s.student == DENSE:
        _check_dense_settings(s)
    teacher_path, teacher_sha = _teacher_identity(s, ctx)
    if teacher_path is not None and teacher_sha is not None:
        cache.check_teacher(teacher_sha, teacher_path)
    dense: Optional[Dict[str, Any]] = None
    if s.init_checkpoint is not None:
        student, config, tag, dense = _student_from_checkpoint(
            s, s.init_checkpoint, cache, teacher_sha
        )
    else:
        if teacher_path is None:
            raise ValueError(
                "give teacher_checkpoint (the SAM the cache was made with), sam_checkpoint, or "
                "init_checkpoint: the student needs its teacher's weights"
            )
        inherit_from = s.sam_checkpoint or teacher_path
        if s.init == "none" and s.sam_checkpoint is None and s.teacher_checkpoint is None:
            raise ValueError("init 'none' still needs teacher_checkpoint for the mask decoder")
        student, config, tag = build_student(
            s.student, inherit_from, s.init, dict(s.student_overrides), seed=s.train.seed
        )
    cache.check_student(config)
    if s.init == "none" and s.init_checkpoint is None:
        encoder_trains = any(p in s.train_parts.split(",") for p in ("encoder", "all"))
        if not encoder_trains:
            raise ValueError(
                "init 'none' leaves the P-blocks random: train them with train_parts 'encoder' "
                "or 'all'"
            )
    select_trainable(student, s.train_parts)
    return student, config, tag, dense


def _check_dense_settings(s: DistillSettings) -> None:
    """ValueError, before anything is read, for settings a dense student cannot train with."""
    if s.init_checkpoint is None:
        raise ValueError(
            "student 'dense' starts from init_checkpoint: a dense student written by "
            "biglittle_sam.distill.students.write_dense_student"
        )
    routed = [p for p in parse_parts(s.train_parts) if p in ("little", "router")]
    if routed or s.router_noise > 0:
        raise ValueError(
            "a dense student has no E-blocks or routers: train_parts 'encoder' trains its "
            f"whole encoder, and router_noise must be 0 (got train_parts '{s.train_parts}', "
            f"router_noise {s.router_noise})"
        )


def _student_from_checkpoint(
    s: DistillSettings, path: str, cache: TeacherCache, teacher_sha: Optional[str]
) -> Tuple[Sam, SamViTConfig, str, Optional[Dict[str, Any]]]:
    """The big.LITTLE or dense student of ``path`` (``init_checkpoint``: phase 1 -> 2) and its
    ``dense_student`` record; without a teacher checkpoint, the cache is checked against the
    teacher checksum the file records."""
    if s.student_overrides:
        raise ValueError(
            "student_overrides cannot be combined with init_checkpoint: the checkpoint "
            "stores its own config"
        )
    student, config, meta = load_student(path)
    dense = dense_record(meta)
    if dense is None and not isinstance(config, BigLittleConfig):
        raise CheckpointError(
            f"{path}: is a plain SAM ('{config.name}'); init_checkpoint takes a "
            "big.LITTLE or dense student (to start from a SAM, use sam_checkpoint)"
        )
    if (dense is not None) != (s.student == DENSE):
        raise CheckpointError(
            f"{path}: holds a {'dense' if dense else 'big.LITTLE'} student ('{config.name}'), "
            f"but student is '{s.student}'; pass student '{DENSE if dense else config.name}'"
        )
    if dense is None and config.name != s.student:
        raise CheckpointError(f"{path}: holds a '{config.name}' student, not '{s.student}'")
    recorded = meta.get("teacher_sha256")
    if teacher_sha is None and isinstance(recorded, str):
        cache.check_teacher(recorded, f"{path}'s recorded teacher")
    elif teacher_sha is None:
        raise ValueError(
            f"{path} does not record its teacher's checksum; give "
            "teacher_checkpoint so that the cache can be checked against it"
        )
    tag = meta.get("teacher") or getattr(config, "teacher", config.name)
    return student, config, str(tag), dense


def _teacher_heads(s: DistillSettings, config: SamViTConfig) -> Optional[TeacherHeads]:
    """Phase 2: the teacher's frozen prompt encoder and mask decoder (None in phase 1)."""
    if s.phase != 2:
        return None
    if s.teacher_checkpoint is None and s.sam_checkpoint is None:
        raise ValueError("phase 2 needs teacher_checkpoint (the teacher's mask decoder)")
    teacher_sam, teacher_cfg, _ = load_sam(str(s.teacher_checkpoint or s.sam_checkpoint))
    if (teacher_cfg.img_size, teacher_cfg.out_chans) != (config.img_size, config.out_chans):
        raise CacheError(
            f"teacher {teacher_cfg.name} takes {teacher_cfg.img_size} px and embeds in "
            f"{teacher_cfg.out_chans} channels; the student {config.name} takes "
            f"{config.img_size} px and {config.out_chans} channels"
        )
    return TeacherHeads(teacher_sam)


def _cached_dataset(
    s: DistillSettings, cache: TeacherCache, config: SamViTConfig
) -> Tuple[TrainImages, Dict[str, int]]:
    """The images that have a cached teacher embedding, and counts of what was left out.

    Raises:
      CacheError: images without an entry (unless ``allow_partial_cache``), or none with one.
    """
    source = build_image_source(
        s.images, s.dataset, s.annotations, s.limit, need_masks=s.phase == 2
    )
    keys = [image_key(n) for n in source_file_names(source)]
    usable = [i for i, k in enumerate(keys) if k in cache.entries]
    unreadable = [i for i, k in enumerate(keys) if k in cache.skipped]
    missing = [i for i, k in enumerate(keys) if k not in cache.entries and k not in cache.skipped]
    if missing and not s.allow_partial_cache:
        names = source_file_names(source)
        raise CacheError(
            f"{cache.root}: {len(missing)} of {len(keys)} images of {s.images} have no cached "
            f"embedding (e.g. {', '.join(names[i] for i in missing[:3])}); finish the cache with "
            "tools/cache_teacher.py (same --images and --out), or pass --allow-partial-cache"
        )
    if not usable:
        raise CacheError(f"{cache.root}: none of the {len(keys)} images of {s.images} is cached")
    dataset = TrainImages(
        source,
        img_size=config.img_size,
        grid=config.grid_size,
        seed=s.train.seed,
        with_masks=s.phase == 2,
        max_instances=s.max_instances,
        hflip=False,
        strict=s.strict,
        indices=usable,
        embedding_loader=cache.load_embedding,
        embedding_shape=cache.embedding_shape,
        keys=keys,
    )
    info = {
        "images": len(keys),
        "used": len(usable),
        "unreadable_in_cache": len(unreadable),
        "not_cached": len(missing),
    }
    return dataset, info


def _step_schedule(
    s: DistillSettings,
    student: Sam,
    exploration: Optional[RouterExploration],
    routed: bool = True,
) -> Callable[[int], Dict[str, float]]:
    """``begin_step``: sets the step's keep ratio (and router noise); returns them to log. A dense
    student (not ``routed``) has no keep ratio: nothing is set or logged."""

    def begin_step(step: int) -> Dict[str, float]:
        if not routed:
            return {}
        ratio = keep_ratio_for_step(s.train.seed, step, s.keep_ratios)
        set_keep_ratio(student, ratio)
        logged = {"keep_ratio": ratio}
        if exploration is not None:
            logged["router_noise"] = exploration.set_step(step)
        return logged

    return begin_step


def run_distillation(settings: DistillSettings) -> TrainResult:
    """Distil as ``settings`` says, in this process or as one rank of a torchrun job.

    Writes under ``settings.train.out_dir``: ``init.pth`` (the student before distillation, for a
    new run), ``model.pth`` (loads with ``sam_model_registry[student](checkpoint=...)``),
    ``checkpoints/last.pth``, ``metrics.jsonl`` and ``loss.png``.
    """
    ctx, device = init_distributed(settings.train.device)
    try:
        task = build_distill_task(settings, ctx, device)
        out_dir = Path(settings.train.out_dir)
        new_run = resolve_resume(settings.train.resume, out_dir) is None
        if settings.save_init and new_run and ctx.is_main:
            save_model_checkpoint(
                out_dir / "init.pth",
                task.sam,
                task.config,
                teacher=task.teacher,
                note="the student before distillation",
                **task.extra,
            )
        return run_training(task, settings.train, ctx, device)
    finally:
        ctx.close()

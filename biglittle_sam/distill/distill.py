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

    from biglittle_sam.distill import DistillSettings, run_distillation
    from biglittle_sam.train import TrainSettings
    run_distillation(DistillSettings(
        cache="cache/vit_b", images="sa1b/", student="bl_b",
        teacher_checkpoint="sam_vit_b_01ec64.pth",
        train=TrainSettings(steps=20000, batch_size=64, lr=1e-3, out_dir="outputs/bl_b")))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn

from ..checkpoint import CheckpointError, save_model_checkpoint
from ..config import BigLittleConfig, config_to_dict, validate_keep_ratio
from ..modeling import set_keep_ratio
from ..runtime.distributed import DistContext, init_distributed
from ..train.data import TrainImages, build_image_source, image_key, source_file_names
from ..train.finetune import PAD_LOGIT, valid_parts
from ..train.loop import TrainResult, TrainTask, resolve_resume, run_training
from ..train.losses import bce_loss, dice_loss
from ..train.models import STUDENT_INITS, build_student, file_sha256, load_sam
from ..train.parts import select_trainable
from ..train.prompts import (
    batch_image_prompts,
    cat_or_none,
    decode_prompts,
    decoder_stride,
    per_prompt,
)
from ..train.settings import (
    TrainSettings,
    fingerprint_settings,
    keep_ratio_for_step,
    settings_to_dict,
)
from .cache import CacheError, TeacherCache
from .losses import embedding_distill_loss
from .routing import RouterExploration

__all__ = [
    "DistillSettings",
    "DistillModule",
    "TeacherHeads",
    "build_distill_task",
    "run_distillation",
    "DEFAULT_KEEP_RATIOS",
]

DEFAULT_KEEP_RATIOS = (0.1, 0.25, 0.5, 1.0)
# Task fields a resumed run may change: paths (the teacher is checked by checksum instead).
DISTILL_FREE_FIELDS = frozenset(
    {
        "cache",
        "images",
        "annotations",
        "sam_checkpoint",
        "teacher_checkpoint",
        "init_checkpoint",
        "strict",
        "save_init",
        "train",
    }
)


@dataclass(frozen=True)
class DistillSettings:
    """A distillation run. Defaults: phase 1, E-blocks and routers, keep ratio drawn per step."""

    cache: str = ""  # the teacher embedding cache (tools/cache_teacher.py)
    images: str = ""  # the images the cache was made from
    dataset: Optional[str] = None  # coco, lvis, sa1b or folder; None: from the files
    annotations: Optional[str] = None  # COCO / LVIS json (phase 2 needs masks)
    student: str = "bl_b"  # bl_b, bl_l, bl_h or bl_tiny
    teacher_checkpoint: Optional[str] = None  # the cache's teacher (phase 2 uses its decoder)
    sam_checkpoint: Optional[str] = None  # the SAM the student inherits from; None: the teacher
    init: str = "teacher"  # "teacher": inherit P-blocks etc.; "none": random encoder (ablation)
    init_checkpoint: Optional[str] = None  # start from a big.LITTLE checkpoint (phase 1 -> 2)
    student_overrides: Tuple[Tuple[str, Any], ...] = ()  # config fields (little_dim, ...)
    phase: int = 1  # 1: embeddings; 2: embeddings + masks with prompts in the loop
    keep_ratios: Tuple[float, ...] = DEFAULT_KEEP_RATIOS  # one drawn per step
    train_parts: str = "little"  # E-blocks + routers; "encoder" or "all" train more
    mse_weight: float = 1.0  # embedding MSE
    cosine_weight: float = 1.0  # embedding cosine distance
    mask_weight: float = 1.0  # phase 2: BCE + Dice against the teacher's masks
    # Phase 2: MSE between the student's and the teacher's predicted IoUs (the frozen IoU head
    # picks which of the three masks SamPredictor returns first; a student that ranks them
    # differently hands back another mask even when all three are right).
    iou_weight: float = 0.0
    max_instances: int = 16  # phase 2: objects per image per step
    point_prob: float = 0.5  # phase 2: share of objects prompted by a point (else a box)
    refine_click: bool = True  # phase 2: a second round with a click where the masks disagree
    # Phase 2: the BCE's targets are the teacher's mask probabilities (sigmoid of its logits)
    # instead of its binary masks, so the student also learns where the teacher is unsure (the
    # Dice term keeps the binary masks: against soft targets its optimum is not the target).
    soft_targets: bool = False
    router_noise: float = 0.0  # Gumbel noise on router logits while training (exploration)
    router_noise_anneal: float = 0.75  # share of the steps over which the noise decays to 0
    router_lr_scale: float = 1.0  # routers train at this multiple of lr
    allow_partial_cache: bool = False  # train on the cached images when some have no entry
    save_init: bool = True  # write <out_dir>/init.pth, the student before distillation
    limit: Optional[int] = None  # use only the first N images
    strict: bool = False  # an unreadable image stops the run
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(lr=1e-3, weight_decay=0.01, out_dir="outputs/distill")
    )

    def __post_init__(self) -> None:
        if not self.cache or not self.images:
            raise ValueError("cache and images are required")
        if self.phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {self.phase}")
        if self.init not in STUDENT_INITS:
            raise ValueError(f"init must be one of {STUDENT_INITS}, got {self.init!r}")
        if not self.keep_ratios:
            raise ValueError("keep_ratios must name at least one ratio")
        for r in self.keep_ratios:
            validate_keep_ratio(r)
        if min(self.mse_weight, self.cosine_weight, self.mask_weight, self.iou_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if not 0.0 <= self.point_prob <= 1.0:
            raise ValueError(f"point_prob must be in [0, 1], got {self.point_prob}")
        if self.router_noise < 0 or not 0.0 < self.router_noise_anneal <= 1.0:
            raise ValueError(
                "router_noise must be >= 0 and router_noise_anneal in (0, 1], got "
                f"{self.router_noise}, {self.router_noise_anneal}"
            )
        if self.router_lr_scale <= 0:
            raise ValueError(f"router_lr_scale must be > 0, got {self.router_lr_scale}")
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in self.keep_ratios))
        object.__setattr__(
            self, "student_overrides", tuple((str(k), v) for k, v in self.student_overrides)
        )


class TeacherHeads(nn.Module):
    """The teacher's prompt encoder and mask decoder, frozen: phase 2's targets come from them
    and the cached teacher embedding (the teacher's image encoder is not needed)."""

    def __init__(self, teacher: Sam) -> None:
        super().__init__()
        self.prompt_encoder = teacher.prompt_encoder
        self.mask_decoder = teacher.mask_decoder
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "TeacherHeads":
        return super().train(False)


class DistillModule(nn.Module):
    """``forward(batch) -> (per-image loss, metrics)`` for phase 1 or phase 2."""

    def __init__(
        self,
        student: Sam,
        settings: DistillSettings,
        teacher: Optional[TeacherHeads] = None,
        exploration: Optional[RouterExploration] = None,
    ) -> None:
        super().__init__()
        if settings.phase == 2 and teacher is None:
            raise ValueError("phase 2 needs the teacher's prompt encoder and mask decoder")
        self.student = student
        self.teacher = teacher
        self.settings = settings
        self.exploration = exploration

    def forward(self, batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """
        Arguments:
          batch: from ``collate_items``: ``image`` B x 3 x S x S, ``teacher`` B x C x g x g,
            ``valid`` B x 2, ``ok`` B, ``seed`` B; phase 2 also ``masks``, ``boxes``,
            ``instances``, ``input_size``.

        Returns:
          (B,) loss per image (0 for an unreadable one) and batch means of ``loss_mse``,
          ``loss_cos`` (and ``loss_mask`` in phase 2).
        """
        s = self.settings
        if self.exploration is not None:
            self.exploration.set_images(batch["seed"].tolist())
        try:
            student = self.student.image_encoder(batch["image"])  # (B, C, g, g)
        finally:
            if self.exploration is not None:
                self.exploration.set_images(None)
        teacher = batch["teacher"].float()  # (B, C, g, g) from the fp16 cache
        loss, mse, cos = embedding_distill_loss(
            student, teacher, batch["valid"], s.mse_weight, s.cosine_weight
        )  # (B,) each
        ok = batch["ok"]
        okf = ok.float()
        count = okf.sum().clamp(min=1.0)
        metrics = {
            "loss_mse": (mse.detach() * okf).sum() / count,
            "loss_cos": (cos.detach() * okf).sum() / count,
        }
        if s.phase == 2:
            mask_loss = self._mask_losses(student, teacher, batch)  # (B,)
            loss = loss + s.mask_weight * mask_loss
            metrics["loss_mask"] = (mask_loss.detach() * okf).sum() / count
        return torch.where(ok, loss, torch.zeros_like(loss)), metrics

    def _mask_losses(self, student: Tensor, teacher: Tensor, batch: Dict[str, Any]) -> Tensor:
        """BCE + Dice of the student's masks against the teacher's, per image.

        Each image draws its prompts from its own generator in the same order as if it were
        alone; the decoders run once per prompt type and round for the whole batch.

        Arguments:
          student, teacher: B x C x g x g embeddings; batch: as :meth:`forward`.

        Returns:
          B mean losses over each image's prompts and rounds (0 for an image without objects).
        """
        assert self.teacher is not None  # checked in __init__ for phase 2
        s = self.settings
        stride = decoder_stride(self.student.prompt_encoder)
        img_size = self.student.image_encoder.img_size
        images = batch_image_prompts(batch, s.point_prob, stride)
        B = student.shape[0]
        totals = [student.new_zeros((), dtype=torch.float32)] * B
        terms = [0] * B
        spe, smd = self.student.prompt_encoder, self.student.mask_decoder
        tpe, tmd = self.teacher.prompt_encoder, self.teacher.mask_decoder
        for point_group in (False, True):
            groups = [g for g in (im.group(point_group, img_size, stride) for im in images) if g]
            if not groups:
                continue
            sizes = [g.k for g in groups]
            s_emb = per_prompt(student, groups)  # (K, C, g, g)
            t_emb = per_prompt(teacher, groups)  # (K, C, g, g)
            side = 4 * student.shape[-1]  # the decoders' low-res mask side, 4g
            valid = valid_parts(groups, side)  # (K, 1, 4g, 4g)
            rounds = 2 if s.refine_click else 1
            for r in range(rounds):
                multimask = point_group and r == 0
                coords = cat_or_none([g.coords for g in groups])  # (K, n, 2)
                labels = cat_or_none([g.labels for g in groups])  # (K, n)
                box = cat_or_none([g.box for g in groups])  # (K, 4)
                with torch.no_grad():
                    t_logits, t_iou = decode_prompts(
                        tpe, tmd, t_emb, coords, labels, box, None, multimask
                    )  # (K, m, 4g, 4g), (K, m)
                s_logits, s_iou = decode_prompts(
                    spe, smd, s_emb, coords, labels, box, None, multimask
                )  # (K, m, 4g, 4g), (K, m)
                per_prompt_loss, pred, target = mask_distill_losses(
                    s_logits, s_iou, t_logits, t_iou, valid, s.soft_targets, s.iou_weight
                )  # (K,), (K, m, 4g, 4g), (K, m, 4g, 4g)
                for g, group_loss in zip(groups, per_prompt_loss.split(sizes)):
                    totals[g.b] = totals[g.b] + group_loss.sum()
                    terms[g.b] += g.k
                if r < rounds - 1:
                    rows = torch.arange(pred.shape[0], device=pred.device)
                    best = t_iou.argmax(dim=1)  # (K,): the teacher's preferred output
                    chosen = zip(
                        groups, pred[rows, best].split(sizes), target[rows, best].split(sizes)
                    )
                    for g, p_best, t_best in chosen:
                        vh, vw = g.targets.shape[-2:]
                        g.add_click(p_best[:, :vh, :vw] > 0, t_best[:, :vh, :vw] > 0.5, stride)
        return torch.stack([t / max(n, 1) for t, n in zip(totals, terms)])  # (B,)


def mask_distill_losses(
    s_logits: Tensor,
    s_iou: Tensor,
    t_logits: Tensor,
    t_iou: Tensor,
    valid: Tensor,
    soft_targets: bool,
    iou_weight: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Phase 2's loss of every prompt at once: BCE + Dice of the student's masks against the
    teacher's (and the IoU heads' squared difference), each on its image's valid part only.

    The padding gets a logit whose sigmoid, loss and gradient are exactly 0, so sums over the
    padded masks equal sums over each valid part; the BCE is rescaled to a mean over valid pixels.

    Arguments:
      s_logits, t_logits: K x m x side x side; s_iou, t_iou: K x m; valid: K x 1 x side x side.

    Returns:
      The mean loss over the m outputs per prompt (K,), the student's masked logits and the
      teacher's binary targets (K x m x side x side each).
    """
    side = s_logits.shape[-1]
    pixels = valid.flatten(-2).sum(-1).float().clamp(min=1)  # (K, 1): valid pixels per prompt
    pad = s_logits.new_tensor(PAD_LOGIT)
    teacher = torch.where(valid, t_logits, pad).float()  # (K, m, side, side)
    target = (teacher > 0).float()
    soft = torch.sigmoid(teacher) if soft_targets else target
    pred = torch.where(valid, s_logits, pad)  # (K, m, side, side)
    per_mask = bce_loss(pred, soft) * (side * side / pixels) + dice_loss(pred, target)  # (K, m)
    if iou_weight > 0:
        per_mask = per_mask + iou_weight * (s_iou.float() - t_iou.float()) ** 2  # (K, m)
    return per_mask.mean(dim=1), pred, target


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
    teacher_path, teacher_sha = _teacher_identity(s, ctx)
    if teacher_path is not None and teacher_sha is not None:
        cache.check_teacher(teacher_sha, teacher_path)
    if s.init_checkpoint is not None:
        if s.student_overrides:
            raise ValueError(
                "student_overrides cannot be combined with init_checkpoint: the checkpoint "
                "stores its own config"
            )
        student, config, meta = load_sam(s.init_checkpoint)
        if not isinstance(config, BigLittleConfig):
            raise CheckpointError(
                f"{s.init_checkpoint}: is a plain SAM ('{config.name}'); init_checkpoint takes a "
                "big.LITTLE student (to start from a SAM, use sam_checkpoint)"
            )
        if config.name != s.student:
            raise CheckpointError(
                f"{s.init_checkpoint}: holds a '{config.name}' student, not '{s.student}'"
            )
        recorded = meta.get("teacher_sha256")
        if teacher_sha is None and isinstance(recorded, str):
            cache.check_teacher(recorded, f"{s.init_checkpoint}'s recorded teacher")
        elif teacher_sha is None:
            raise ValueError(
                f"{s.init_checkpoint} does not record its teacher's checksum; give "
                "teacher_checkpoint so that the cache can be checked against it"
            )
        tag = str(meta.get("teacher") or config.teacher)
        teacher_sha = teacher_sha or str(recorded)
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

    teacher_heads: Optional[TeacherHeads] = None
    if s.phase == 2:
        if s.teacher_checkpoint is None and s.sam_checkpoint is None:
            raise ValueError("phase 2 needs teacher_checkpoint (the teacher's mask decoder)")
        teacher_sam, teacher_cfg, _ = load_sam(str(s.teacher_checkpoint or s.sam_checkpoint))
        if (teacher_cfg.img_size, teacher_cfg.out_chans) != (config.img_size, config.out_chans):
            raise CacheError(
                f"teacher {teacher_cfg.name} takes {teacher_cfg.img_size} px and embeds in "
                f"{teacher_cfg.out_chans} channels; the student {config.name} takes "
                f"{config.img_size} px and {config.out_chans} channels"
            )
        teacher_heads = TeacherHeads(teacher_sam)
        del teacher_sam

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

    exploration: Optional[RouterExploration] = None
    if s.router_noise > 0:
        anneal = max(1, round(s.router_noise_anneal * s.train.steps))
        exploration = RouterExploration(student.image_encoder, s.router_noise, anneal)

    def begin_step(step: int) -> Dict[str, float]:
        ratio = keep_ratio_for_step(s.train.seed, step, s.keep_ratios)
        set_keep_ratio(student, ratio)
        logged = {"keep_ratio": ratio}
        if exploration is not None:
            logged["router_noise"] = exploration.set_step(step)
        return logged

    fingerprint = {
        "model_config": config_to_dict(config),
        "settings": fingerprint_settings(s, DISTILL_FREE_FIELDS),
        "teacher_sha256": cache.teacher.sha256,
        "dataset_size": len(dataset),
    }
    info = {
        "images": len(keys),
        "used": len(usable),
        "unreadable_in_cache": len(unreadable),
        "not_cached": len(missing),
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
        begin_step=begin_step,
        extra={"teacher_sha256": cache.teacher.sha256, "distill_phase": s.phase},
        lr_scales=((".router.", s.router_lr_scale),) if s.router_lr_scale != 1.0 else (),
    )


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

"""Fine-tuning any registry model (plain SAM or big.LITTLE) on COCO- or SA-1B-format masks.

The losses are SAM's: focal (x20) + Dice on the mask, and an MSE between the IoU head's prediction
and the mask's real IoU. Each object gets a box (with SAM's noise) or a point (uniform in the mask)
as its first prompt, then ``refine_clicks`` rounds in which a click is drawn from the error region
and fed with every earlier prompt and (with probability ``mask_input_prob``) the previous mask's
logits. A single point is ambiguous, so
its first round uses the three-mask output and trains only the best of the three (SAM's rule); the
IoU head learns all three.

    from biglittle_sam.train import FinetuneSettings, TrainSettings, run_finetune
    run_finetune(FinetuneSettings(
        images="train2017", annotations="instances_train2017.json", model="vit_b",
        checkpoint="sam_vit_b_01ec64.pth", train_parts="decoder",
        train=TrainSettings(steps=2000, batch_size=8, out_dir="outputs/ft")))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn

from ..config import BigLittleConfig, config_to_dict, validate_keep_ratio
from ..modeling import set_keep_ratio
from ..runtime.cli import flag, overrides_flag
from ..runtime.distributed import DistContext, init_distributed
from .data import TrainImages, build_image_source
from .loop import TrainResult, TrainTask, run_training
from .losses import dice_loss, mask_iou, sigmoid_focal_loss
from .models import build_model
from .parts import PARTS, select_trainable
from .prompts import (
    PromptGroup,
    batch_image_prompts,
    cat_or_none,
    decode_prompts,
    decoder_stride,
    mask_inputs,
    per_prompt,
)
from .settings import TrainSettings, fingerprint_settings, keep_ratio_for_step, settings_to_dict

__all__ = [
    "FinetuneSettings",
    "FinetuneModule",
    "build_finetune_task",
    "run_finetune",
]

# Task fields a resumed run may change (paths can move; the data size is checked instead).
FINETUNE_FREE_FIELDS = frozenset(
    {"images", "annotations", "checkpoint", "sam_checkpoint", "strict", "train"}
)


@dataclass(frozen=True)
class FinetuneSettings:
    """A fine-tuning run. Defaults: the decoder of a checkpoint, on COCO / SA-1B masks."""

    images: str = flag("", "COCO image folder or SA-1B folder (required, here or in --config)")
    annotations: Optional[str] = None  # COCO / LVIS instance json (None for SA-1B)
    dataset: Optional[str] = flag(
        None, "the annotations' format (default: from the files)", choices=("coco", "lvis", "sa1b")
    )
    model: str = "vit_b"  # registry name: vit_b/l/h, vit_tiny, bl_b/l/h, bl_tiny
    checkpoint: Optional[str] = (
        None  # the model's checkpoint; None: sam_checkpoint or fresh weights
    )
    sam_checkpoint: Optional[str] = None  # big.LITTLE only: an official SAM file to inherit from
    overrides: Tuple[Tuple[str, Any], ...] = overrides_flag(
        "config field, e.g. embed_dim=128 (repeatable)"
    )
    train_parts: str = flag(
        "decoder", f"comma-separated subset of {', '.join(PARTS)}; decoder: the cheapest useful"
    )
    keep_ratios: Tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)  # big.LITTLE: one drawn per step
    max_instances: int = 16  # objects per image per step (a random subset)
    point_prob: float = 0.5  # share of objects prompted by a point rather than a box
    refine_clicks: int = 2  # correcting clicks after the first prompt
    mask_input_prob: float = 0.5  # a refinement round also gets the previous mask's logits
    focal_weight: float = 20.0  # SAM's 20:1 focal to Dice
    dice_weight: float = 1.0  # Dice loss weight
    iou_weight: float = 1.0  # MSE of the IoU head against the real IoU
    hflip: bool = True  # flip half of the images horizontally
    limit: Optional[int] = None  # use only the first N images
    strict: bool = False  # an unreadable image stops the run instead of being skipped
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(lr=1e-4, out_dir="outputs/finetune")
    )

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("images is required: the COCO image folder or the SA-1B folder")
        for r in self.keep_ratios:
            validate_keep_ratio(r)
        if not self.keep_ratios:
            raise ValueError("keep_ratios must name at least one ratio")
        for name in ("point_prob", "mask_input_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.refine_clicks < 0 or self.max_instances < 1:
            raise ValueError(
                f"refine_clicks must be >= 0 and max_instances >= 1, got {self.refine_clicks}, "
                f"{self.max_instances}"
            )
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in self.keep_ratios))
        object.__setattr__(self, "overrides", tuple((str(k), v) for k, v in self.overrides))


_PARTS = ("loss_focal", "loss_dice", "loss_iou", "train_iou")


class FinetuneModule(nn.Module):
    """``forward(batch) -> (per-image loss, metrics)`` with SAM's mask losses and click rounds."""

    def __init__(self, sam: Sam, settings: FinetuneSettings) -> None:
        super().__init__()
        self.sam = sam
        self.settings = settings

    def forward(self, batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """
        Arguments:
          batch: from ``collate_items``: ``image`` B x 3 x S x S, ``masks`` B x K x 4g x 4g,
            ``boxes`` B x K x 4, ``instances`` B x K, ``input_size`` B x 2, ``ok`` B, ``seed`` B.

        Returns:
          (B,) loss per image (0 for an image without instances or unreadable) and the batch means
          of ``loss_focal``, ``loss_dice``, ``loss_iou`` and ``train_iou``.

        Every image draws its prompts from its own generator (seeded by its stream position), in
        the same order as if it were alone, so a batch split over processes trains the same; the
        decoder runs once per prompt type and click round for the whole batch.
        """
        encoder = self.sam.image_encoder
        trains_encoder = any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains_encoder):
            embeddings = encoder(batch["image"])  # (B, C, g, g)
        s = self.settings
        stride = decoder_stride(self.sam.prompt_encoder)
        images = batch_image_prompts(batch, s.point_prob, stride)
        zero = embeddings.new_zeros((), dtype=torch.float32)
        totals = [zero] * embeddings.shape[0]
        sums = {k: [0.0] * embeddings.shape[0] for k in _PARTS}
        rounds = [0] * embeddings.shape[0]
        for point_group in (False, True):
            img_size = self.sam.image_encoder.img_size
            groups = [g for g in (im.group(point_group, img_size, stride) for im in images) if g]
            if groups:
                self._group_rounds(embeddings, groups, point_group, totals, sums, rounds, stride)
        losses = torch.stack([t / max(r, 1) for t, r in zip(totals, rounds)])  # (B,)
        used = [im.b for im in images]
        metrics = {
            k: torch.tensor(sum(v[b] / max(rounds[b], 1) for b in used) / max(len(used), 1))
            for k, v in sums.items()
        }
        return losses, (metrics if used else {})

    def _group_rounds(
        self,
        embeddings: Tensor,
        groups: List["PromptGroup"],
        point_group: bool,
        totals: List[Tensor],
        sums: Dict[str, List[float]],
        rounds: List[int],
        stride: int,
    ) -> None:
        """The first prompt and the refinement rounds of one prompt type, for every image at once.

        Arguments:
          embeddings: B x C x g x g; groups: each image's objects of this prompt type.
          totals, sums, rounds: per-image accumulators, updated in place.
        """
        s = self.settings
        pe, md = self.sam.prompt_encoder, self.sam.mask_decoder
        sizes = [g.k for g in groups]
        prompt_emb = per_prompt(embeddings, groups)  # (K, C, g, g)
        side = 4 * embeddings.shape[-1]  # the decoder's low-res mask side, 4g
        targets, valid = padded_targets(groups, side)  # (K, 1, 4g, 4g) each
        for r in range(1 + s.refine_clicks):
            multimask = point_group and r == 0
            coords = cat_or_none([g.coords for g in groups])  # (K, n, 2)
            labels = cat_or_none([g.labels for g in groups])  # (K, n)
            box = cat_or_none([g.box for g in groups])  # (K, 4)
            mask_input, mask_rows = mask_inputs(groups, self.sam.prompt_encoder)
            logits_all, iou_all = decode_prompts(
                pe, md, prompt_emb, coords, labels, box, mask_input, multimask, mask_rows
            )  # (K, m, 4g, 4g), (K, m)
            loss, parts, best = prompt_losses(
                logits_all, iou_all, targets, valid, s.focal_weight, s.dice_weight, s.iou_weight
            )  # (K,), (4, K), (K,)
            for g, group_loss, group_parts in zip(groups, loss.split(sizes), parts.split(sizes, 1)):
                totals[g.b] = totals[g.b] + group_loss.sum()
                rounds[g.b] += g.k
                for name, value in zip(_PARTS, group_parts.sum(dim=1).tolist()):
                    sums[name][g.b] += value
            if r < s.refine_clicks:
                rows = torch.arange(logits_all.shape[0], device=logits_all.device)
                chosen = logits_all[rows, best]  # (K, 4g, 4g)
                for g, part in zip(groups, chosen.split(sizes)):
                    g.refine(part, s.mask_input_prob, stride)  # (k, 4g, 4g)


# A logit whose sigmoid is exactly 0 and whose loss against a 0 target is exactly 0 in fp16 and
# fp32 (fp16's largest magnitude is 65504).
PAD_LOGIT = -1.0e4


def prompt_losses(
    logits: Tensor,
    iou_pred: Tensor,
    targets: Tensor,
    valid: Tensor,
    focal_weight: float,
    dice_weight: float,
    iou_weight: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """SAM's mask losses of every prompt at once, each on its image's valid part only.

    The padding gets a logit whose sigmoid, loss and gradient are exactly 0 against a 0 target, so
    sums over the padded masks equal sums over each valid part; the focal loss is rescaled from a
    mean over side x side to a mean over the valid pixels.

    Arguments:
      logits: K x m x side x side decoder logits; iou_pred: K x m predicted IoUs.
      targets, valid: K x 1 x side x side (:func:`padded_targets`).

    Returns:
      loss (K,): the best mask's focal and dice loss plus the IoU head's loss; parts (4, K),
      detached: the best mask's focal, dice, the IoU loss and the best mask's IoU (the order of
      ``_PARTS``); best (K,): the index of the best of the m masks.
    """
    side = logits.shape[-1]
    pixels = valid.flatten(-2).sum(-1).float().clamp(min=1)  # (K, 1): valid pixels per prompt
    lg = torch.where(valid, logits, logits.new_tensor(PAD_LOGIT))  # (K, m, side, side)
    tt = targets.expand_as(lg)  # (K, m, side, side)
    focal = sigmoid_focal_loss(lg, tt) * (side * side / pixels)  # (K, m): mean over valid pixels
    dice = dice_loss(lg, tt)  # (K, m)
    per_mask = focal_weight * focal + dice_weight * dice
    best = per_mask.argmin(dim=1)  # (K,): SAM trains the best of 3 for a point
    rows = torch.arange(lg.shape[0], device=lg.device)
    real_iou = mask_iou(lg, tt)  # (K, m)
    iou_loss = ((iou_pred.float() - real_iou) ** 2).mean(dim=1)  # (K,)
    loss = per_mask[rows, best] + iou_weight * iou_loss  # (K,)
    parts = torch.stack([focal[rows, best], dice[rows, best], iou_loss, real_iou[rows, best]])
    return loss, parts.detach(), best


def valid_parts(groups: List["PromptGroup"], side: int) -> Tensor:
    """K x 1 x side x side bool: True on each prompt's image's valid part (its targets' vh x vw,
    from the top left); K is the groups' prompts in order."""
    K = sum(g.k for g in groups)
    valid = torch.zeros(K, 1, side, side, dtype=torch.bool, device=groups[0].targets.device)
    start = 0
    for g in groups:
        vh, vw = g.targets.shape[-2:]
        valid[start : start + g.k, 0, :vh, :vw] = True
        start += g.k
    return valid


def padded_targets(groups: List["PromptGroup"], side: int) -> Tuple[Tensor, Tensor]:
    """Every group's k x vh x vw targets padded to side x side, with where they are valid.

    Returns:
      targets: K x 1 x side x side (fp32, 0 outside each image's valid part) and valid:
      K x 1 x side x side bool (:func:`valid_parts`).
    """
    valid = valid_parts(groups, side)
    targets = torch.zeros(valid.shape, device=valid.device)
    start = 0
    for g in groups:
        vh, vw = g.targets.shape[-2:]
        targets[start : start + g.k, 0, :vh, :vw] = g.targets  # (k, vh, vw) into (k, side, side)
        start += g.k
    return targets, valid


def _overrides(settings: FinetuneSettings) -> Dict[str, Any]:
    return dict(settings.overrides)


def build_finetune_task(
    settings: FinetuneSettings, ctx: DistContext, device: torch.device
) -> TrainTask:
    """Build the model, data and module of a fine-tuning run; every user error raises here,
    before any training step."""
    sam, config, teacher = build_model(
        settings.model,
        settings.checkpoint,
        settings.sam_checkpoint,
        _overrides(settings),
        seed=settings.train.seed,
    )
    select_trainable(sam, settings.train_parts)
    source = build_image_source(
        settings.images, settings.dataset, settings.annotations, settings.limit, need_masks=True
    )
    dataset = TrainImages(
        source,
        img_size=config.img_size,
        grid=config.grid_size,
        seed=settings.train.seed,
        with_masks=True,
        max_instances=settings.max_instances,
        hflip=settings.hflip,
        strict=settings.strict,
    )
    big_little = isinstance(config, BigLittleConfig)

    def begin_step(step: int) -> Dict[str, float]:
        if not big_little:
            return {}
        ratio = keep_ratio_for_step(settings.train.seed, step, settings.keep_ratios)
        set_keep_ratio(sam, ratio)
        return {"keep_ratio": ratio}

    fingerprint = {
        "model_config": config_to_dict(config),
        "settings": fingerprint_settings(settings, FINETUNE_FREE_FIELDS),
        "dataset_size": len(dataset),
    }
    return TrainTask(
        name="finetune",
        sam=sam,
        module=FinetuneModule(sam, settings),
        dataset=dataset,
        config=config,
        teacher=teacher,
        fingerprint=fingerprint,
        settings=settings_to_dict(settings),
        recipe=settings_to_dict(settings),
        begin_step=begin_step,
    )


def run_finetune(settings: FinetuneSettings) -> TrainResult:
    """Fine-tune as ``settings`` says, in this process or as one rank of a torchrun job.

    Writes ``<out_dir>/model.pth`` (loads with ``sam_model_registry[model](checkpoint=...)``),
    ``checkpoints/last.pth``, ``metrics.jsonl`` and ``loss.png``.
    """
    ctx, device = init_distributed(settings.train.device)
    try:
        task = build_finetune_task(settings, ctx, device)
        return run_training(task, settings.train, ctx, device)
    finally:
        ctx.close()

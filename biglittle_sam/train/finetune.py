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

from ..build_sam import set_keep_ratio
from ..config import BigLittleConfig, config_to_dict, validate_keep_ratio
from ..eval.distributed import DistContext, init_distributed
from .data import TrainImages, build_image_source
from .loop import TrainResult, TrainTask, run_training
from .losses import dice_loss, mask_iou, sigmoid_focal_loss
from .models import build_model
from .parts import select_trainable
from .prompts import (
    decode_prompts,
    decoder_stride,
    jitter_boxes,
    point_from_mask,
    random_split,
    refinement_click,
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

    images: str = ""  # COCO image folder or SA-1B folder
    annotations: Optional[str] = None  # COCO / LVIS instance json (None for SA-1B)
    dataset: Optional[str] = None  # coco, lvis or sa1b; None: from the files
    model: str = "vit_b"  # registry name: vit_b/l/h, vit_tiny, bl_b/l/h, bl_tiny
    checkpoint: Optional[str] = (
        None  # the model's checkpoint; None: sam_checkpoint or fresh weights
    )
    sam_checkpoint: Optional[str] = None  # big.LITTLE only: an official SAM file to inherit from
    overrides: Tuple[Tuple[str, Any], ...] = ()  # config fields, e.g. (("embed_dim", 128),)
    train_parts: str = "decoder"  # cheapest useful default; "little", "encoder", "all", ...
    keep_ratios: Tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)  # big.LITTLE: one drawn per step
    max_instances: int = 16  # objects per image per step (a random subset)
    point_prob: float = 0.5  # share of objects prompted by a point rather than a box
    refine_clicks: int = 2  # correcting clicks after the first prompt
    mask_input_prob: float = 0.5  # a refinement round also gets the previous mask's logits
    focal_weight: float = 20.0  # SAM's 20:1 focal to Dice
    dice_weight: float = 1.0
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
        """
        encoder = self.sam.image_encoder
        trains_encoder = any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains_encoder):
            embeddings = encoder(batch["image"])  # (B, C, g, g)
        losses: List[Tensor] = []
        parts: Dict[str, List[Tensor]] = {}
        for b in range(embeddings.shape[0]):
            n = int(batch["instances"][b].sum())
            if n == 0 or not bool(batch["ok"][b]):
                losses.append(embeddings.new_zeros((), dtype=torch.float32))
                continue
            gen = torch.Generator().manual_seed(int(batch["seed"][b]))
            h, w = (int(v) for v in batch["input_size"][b])
            loss, image_parts = self._image_loss(
                embeddings[b : b + 1], batch["masks"][b, :n], batch["boxes"][b, :n], (h, w), gen
            )
            losses.append(loss)
            for k, v in image_parts.items():
                parts.setdefault(k, []).append(v)
        metrics = {k: torch.stack(v).mean() for k, v in parts.items()}
        return torch.stack(losses), metrics

    def _image_loss(
        self,
        embedding: Tensor,
        masks: Tensor,
        boxes: Tensor,
        input_size: Tuple[int, int],
        gen: torch.Generator,
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Mean loss over the objects and click rounds of one image.

        Arguments:
          embedding: 1 x C x g x g; masks: n x 4g x 4g soft targets; boxes: n x 4 input pixels.
        """
        s = self.settings
        img_size = self.sam.image_encoder.img_size
        stride = decoder_stride(self.sam.prompt_encoder)
        vh = -(-input_size[0] // stride)
        vw = -(-input_size[1] // stride)
        targets = masks[:, :vh, :vw]  # (n, vh, vw): the part of the mask frame the image covers
        use_point = random_split(targets.shape[0], s.point_prob, gen, targets.device)  # (n,)
        total = targets.new_zeros(())
        sums = {"loss_focal": 0.0, "loss_dice": 0.0, "loss_iou": 0.0, "train_iou": 0.0}
        rounds = 0
        pe, md = self.sam.prompt_encoder, self.sam.mask_decoder
        for point_group in (False, True):
            idx = torch.nonzero(use_point == point_group).flatten()  # (k,)
            if idx.numel() == 0:
                continue
            t = targets[idx]  # (k, vh, vw)
            k = t.shape[0]
            coords: Optional[Tensor] = None
            labels: Optional[Tensor] = None
            box: Optional[Tensor] = None
            if point_group:
                coords = point_from_mask(t, gen, stride).unsqueeze(1)  # (k, 1, 2)
                labels = torch.ones(k, 1, dtype=torch.long, device=t.device)
            else:
                box = jitter_boxes(boxes[idx], input_size, img_size, gen)  # (k, 4)
            mask_input: Optional[Tensor] = None
            for r in range(1 + s.refine_clicks):
                multimask = point_group and r == 0
                logits, iou_pred = decode_prompts(
                    pe, md, embedding, coords, labels, box, mask_input, multimask
                )  # (k, m, 4g, 4g), (k, m)
                lg = logits[..., :vh, :vw]  # (k, m, vh, vw)
                tt = t.unsqueeze(1).expand_as(lg)
                focal = sigmoid_focal_loss(lg, tt)  # (k, m)
                dice = dice_loss(lg, tt)  # (k, m)
                per_mask = s.focal_weight * focal + s.dice_weight * dice
                best = per_mask.argmin(dim=1)  # (k,): SAM trains the best of 3 for a point
                rows = torch.arange(k, device=lg.device)
                real_iou = mask_iou(lg, tt)  # (k, m)
                iou_loss = ((iou_pred.float() - real_iou) ** 2).mean(dim=1)  # (k,)
                total = total + (per_mask[rows, best] + s.iou_weight * iou_loss).sum()
                rounds += k
                sums["loss_focal"] += float(focal[rows, best].detach().sum())
                sums["loss_dice"] += float(dice[rows, best].detach().sum())
                sums["loss_iou"] += float(iou_loss.detach().sum())
                sums["train_iou"] += float(real_iou[rows, best].sum())
                if r == s.refine_clicks:
                    break
                chosen = logits[rows, best]  # (k, 4g, 4g)
                click, label = refinement_click(chosen[:, :vh, :vw] > 0, t >= 0.5, gen, stride)
                if coords is None or labels is None:
                    coords, labels = click, label
                else:
                    coords = torch.cat([coords, click], dim=1)  # (k, n + 1, 2)
                    labels = torch.cat([labels, label], dim=1)  # (k, n + 1)
                # SAM feeds the previous logits back; evaluations (and many users) give only the
                # clicks, so some rounds train that case too.
                with_mask = bool(torch.rand((), generator=gen) < s.mask_input_prob)
                mask_input = chosen.unsqueeze(1).detach() if with_mask else None  # (k, 1, 4g, 4g)
        parts = {k: torch.tensor(v / max(rounds, 1)) for k, v in sums.items()}
        return total / max(rounds, 1), parts


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

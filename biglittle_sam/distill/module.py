"""What one distillation step computes: the student's losses against the cached teacher embedding
(phase 1) and against the teacher's masks under the same prompts (phase 2)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn

from ..train.finetune import PAD_LOGIT, valid_parts
from ..train.losses import bce_loss, dice_loss
from ..train.prompts import (
    batch_image_prompts,
    cat_or_none,
    decode_prompts,
    decoder_stride,
    per_prompt,
)
from .losses import embedding_distill_loss
from .routing import RouterExploration
from .settings import DistillSettings

__all__ = ["DistillModule", "TeacherHeads", "mask_distill_losses"]


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

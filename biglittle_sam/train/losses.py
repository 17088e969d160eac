"""Mask losses on the decoder's low-resolution logits, as SAM was trained.

Every function takes logits and targets of the same shape ``... x h x w`` and returns one value per
mask, shape ``...``: the callers choose how to combine masks (SAM keeps the best of three outputs
for an ambiguous prompt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_focal_loss", "dice_loss", "bce_loss", "mask_iou"]


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss (Lin et al.) per mask, the mean over pixels.

    Arguments:
      logits: ... x h x w mask logits.
      targets: ... x h x w targets in [0, 1].
      alpha: weight of the positive class (negative pixels get 1 - alpha).
      gamma: focusing exponent: well-classified pixels count less.

    Returns:
      ... per-mask loss.
    """
    logits = logits.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice coefficient per mask: ``1 - (2 |p t| + s) / (|p| + |t| + s)``.

    Arguments:
      logits, targets: ... x h x w (targets in [0, 1]).
      smooth: keeps an empty target with an empty prediction at loss 0.

    Returns:
      ... per-mask loss.
    """
    prob = logits.float().sigmoid().flatten(-2)  # (..., h*w)
    t = targets.flatten(-2)
    inter = (prob * t).sum(-1)
    return 1 - (2 * inter + smooth) / (prob.sum(-1) + t.sum(-1) + smooth)


def bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy per mask, the mean over pixels. Shapes as :func:`dice_loss`."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return loss.flatten(-2).mean(-1)


@torch.no_grad()
def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of the predicted mask (logit > 0) with the target (>= 0.5) per mask; 0 when both are
    empty, as pycocotools counts it. Shapes as :func:`dice_loss`; no gradient."""
    pred = (logits > 0).flatten(-2)
    t = (targets >= 0.5).flatten(-2)
    inter = (pred & t).sum(-1).float()
    union = (pred | t).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))

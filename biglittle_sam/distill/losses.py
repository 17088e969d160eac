"""Phase-1 distillation loss: MSE plus cosine distance to the teacher, on the valid region only.

``Sam.preprocess`` pads every image to S x S at the bottom and right, so embedding rows below
ceil(h' / 16) and columns right of ceil(w' / 16) see only padding. What the teacher computes
there says nothing about the image, and fitting it would spend the student's capacity on padding:
those positions are left out of both terms.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["valid_region", "embedding_distill_loss"]


def valid_region(valid: Tensor, grid: int) -> Tensor:
    """B x 1 x g x g bool, True where an embedding position sees the image.

    Arguments:
      valid: B x 2 (rows, cols) of valid embedding positions (top-left block).
      grid: g, the embedding side.
    """
    ar = torch.arange(grid, device=valid.device)
    rows = ar[None, :] < valid[:, 0:1]  # (B, g)
    cols = ar[None, :] < valid[:, 1:2]  # (B, g)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)  # (B, 1, g, g)


def embedding_distill_loss(
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    mse_weight: float = 1.0,
    cosine_weight: float = 1.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-image ``mse_weight * MSE + cosine_weight * (1 - cosine)`` over the valid region.

    Arguments:
      student, teacher: B x C x g x g embeddings.
      valid: B x 2 valid (rows, cols).
      mse_weight, cosine_weight: weights of the two terms.

    Returns:
      loss, mse, cosine distance: each B. MSE is the mean over channels and valid positions;
      the cosine distance is over channels, averaged over valid positions.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student embedding {tuple(student.shape)} and teacher embedding "
            f"{tuple(teacher.shape)} differ"
        )
    student, teacher = student.float(), teacher.float()
    C, g = student.shape[1], student.shape[-1]
    region = valid_region(valid, g).to(student.dtype)  # (B, 1, g, g)
    count = region.sum(dim=(1, 2, 3)).clamp(min=1.0)  # (B,) valid positions
    mse = (((student - teacher) ** 2) * region).sum(dim=(1, 2, 3)) / (count * C)  # (B,)
    cosine = F.cosine_similarity(student, teacher, dim=1, eps=1e-6)  # (B, g, g)
    distance = ((1.0 - cosine) * region[:, 0]).sum(dim=(1, 2)) / count  # (B,)
    return mse_weight * mse + cosine_weight * distance, mse, distance

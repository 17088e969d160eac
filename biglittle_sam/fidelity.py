"""Embedding fidelity: how close a student encoder's embedding is to its teacher's.

Both encoders see the same preprocessed image (``SamPredictor.set_image``). Only the valid part of
the embedding is compared: ``ResizeLongestSide`` makes the image h' x w' and ``Sam.preprocess``
pads it to img_size x img_size, so embedding rows below ceil(h' / patch) and columns right of
ceil(w' / patch) see only padding. The check needs no annotations and catches a bad distillation
before a full COCO run.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["valid_embedding_size", "embedding_fidelity"]


def valid_embedding_size(input_size: Tuple[int, int], img_size: int, grid: int) -> Tuple[int, int]:
    """(rows, cols) of the embedding that cover the resized image rather than padding.

    Arguments:
      input_size: (h', w'), the image size after ResizeLongestSide.
      img_size: the encoder's padded input side (1024 for SAM).
      grid: the embedding side (64 for SAM); the patch is img_size / grid pixels.
    """
    if grid < 1 or img_size % grid:
        raise ValueError(f"embedding side {grid} does not divide the input side {img_size}")
    patch = img_size // grid
    h, w = input_size
    return min(grid, math.ceil(h / patch)), min(grid, math.ceil(w / patch))


def embedding_fidelity(
    student: torch.Tensor, teacher: torch.Tensor, valid: Tuple[int, int]
) -> Tuple[float, float]:
    """MSE and mean cosine similarity of two embeddings over their valid region.

    Arguments:
      student, teacher: 1 x C x g x g (or C x g x g) embeddings of the same image.
      valid: (rows, cols) from :func:`valid_embedding_size`.

    Returns:
      (MSE over channels and valid positions, cosine similarity over channels averaged over valid
      positions).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student embedding {tuple(student.shape)} and teacher embedding "
            f"{tuple(teacher.shape)} differ; compare encoders with the same output size"
        )
    s = student.reshape(-1, *student.shape[-3:]).float()  # (1, C, g, g)
    t = teacher.reshape(-1, *teacher.shape[-3:]).float()
    rows, cols = valid
    s = s[..., :rows, :cols]  # (1, C, rows, cols)
    t = t[..., :rows, :cols]
    mse = float(((s - t) ** 2).mean())
    cosine = float(F.cosine_similarity(s, t, dim=1).mean())  # per position, over channels
    return mse, cosine

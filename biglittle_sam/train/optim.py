"""AdamW with decay / no-decay groups, and the warm-up plus cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .settings import TrainSettings

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "base_lr",
    "lr_factor",
    "no_decay",
]

# Parameters that weight decay would only pull toward zero for no gain: positions, LayerScale.
_NO_DECAY_NAMES = (
    "pos_embed",
    "rel_pos_h",
    "rel_pos_w",
    ".gamma",
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "iou_token",
    "mask_tokens",
)


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Whether ``name`` is exempt from weight decay: 1-D tensors (norms, biases), positions, gamma,
    and the learned prompt and output tokens of the prompt encoder and mask decoder."""
    return param.dim() <= 1 or any(s in name for s in _NO_DECAY_NAMES)


def build_optimizer(
    model: nn.Module,
    settings: TrainSettings,
    lr_scales: Sequence[Tuple[str, float]] = (),
) -> torch.optim.AdamW:
    """AdamW over the parameters of ``model`` that require gradients.

    Groups: decay / no decay, times the ``lr_scales`` entries (a parameter whose name contains the
    substring trains at ``scale x lr``; the first match wins). Groups and their order depend only
    on the parameter names, so an optimizer state saved by one run loads into another run of the
    same configuration.
    """
    groups: Dict[Tuple[bool, float], List[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = next((f for s, f in lr_scales if s in name), 1.0)
        groups.setdefault((no_decay(name, p), scale), []).append(p)
    if not groups:
        raise ValueError("no parameter requires a gradient: nothing to train")
    param_groups = [
        {
            "params": params,
            "weight_decay": 0.0 if exempt else settings.weight_decay,
            "lr": settings.lr * scale,
            "lr_scale": scale,
        }
        for (exempt, scale), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(
        param_groups,
        lr=settings.lr,
        betas=settings.betas,  # type: ignore[arg-type]
    )


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """The learning rate at ``step`` (0-based) as a share of the peak.

    Linear warm-up from 1/warmup to 1 over ``warmup`` steps, then a cosine from 1 down to
    ``min_ratio`` at step ``total - 1``.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` applying :func:`lr_factor`; its ``state_dict`` holds only plain numbers."""
    total, warmup, ratio = settings.steps, settings.effective_warmup, settings.min_lr_ratio
    factor: Callable[[int], float] = lambda step: lr_factor(step, total, warmup, ratio)  # noqa
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's current learning rate, before any group's ``lr_scale``."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))

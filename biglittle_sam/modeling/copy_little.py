"""The training-free layout with a learned correction (``little_correction``).

The training-free mode (:mod:`.training_free`) gives a skipped token the update of its window's
most similar chosen token. This block keeps that layout and learns a correction on top of it:

    x = x + gamma * Up(Little(Down(LN(x))))     # E-block: every token, as in BigLittleBlock
    s = edge(norm1(x))                           # the training-free score (no router)
    idx = top_k(s, k) per window                 # as in the training-free mode
    x[idx] = Block(x)[idx]                       # SAM's block rows (semi-cross attention)
    x[rest] = x + gate * (Block(x) - x)[match]   # the copy rule, gated per channel

``gamma`` starts at 0 and ``gate`` at 1, so a fresh block computes exactly the training-free
block: distillation starts from the training-free model instead of from random routers and a
copy-less skip path. At a ratio that routes every token (r = 1) the block is SAM's block alone:
neither the E-block nor the gate runs. Its state-dict keys are SAM's block's, ``little.*`` (the
E-block, as in :class:`~biglittle_sam.modeling.blocks.BigLittleBlock`) and ``context.gate``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import Tensor, nn

from ..config import BigLittleConfig, little_window
from .little_block import LittleBlock
from .training_free import TrainingFreeBlock, routed_layers
from .vit_config import sam_block_fields

__all__ = ["CopyGate", "CopyLittleBlock", "little_fields", "training_free_blocks"]


class CopyGate(nn.Module):
    """A per-channel gate on the copied update of the skipped tokens (1 at the start)."""

    def __init__(self, dim: int) -> None:
        """
        Arguments:
          dim: residual width C.
        """
        super().__init__()
        self.gate = nn.Parameter(torch.ones(dim))

    def forward(self, copied: Tensor) -> Tensor:
        """copied: B x H x W x C -> the gated update, B x H x W x C."""
        return self.gate * copied


def little_fields(config: BigLittleConfig) -> Dict[str, Any]:
    """The E-block's sizes for :class:`CopyLittleBlock` (its ``little`` argument) from ``config``:
    width ``dim``, ``heads``, ``mlp_ratio`` and ``window_size``."""
    return {
        "dim": config.little_dim,
        "heads": config.little_heads,
        "mlp_ratio": config.little_mlp_ratio,
        "window_size": little_window(config),
    }


class CopyLittleBlock(TrainingFreeBlock):
    """A routed layer of the training-free mode with an E-block and a gated copy rule."""

    def __init__(self, dim: int, num_heads: int, little: Mapping[str, Any], **block: Any) -> None:
        """
        Arguments:
          dim, num_heads, block: as :class:`TrainingFreeBlock` (``skip_rule`` must be "copy").
          little: the E-block's sizes, as :func:`little_fields` gives them.
        """
        super().__init__(dim, num_heads, **block)
        if self.skip_rule != "copy":
            raise ValueError(
                f"the gate corrects the copy rule (skip_rule 'copy'): {self.skip_rule!r}"
            )
        self.little = LittleBlock(
            dim,
            little["dim"],
            little["heads"],
            little["window_size"],
            mlp_ratio=little["mlp_ratio"],
            fused_attn=bool(block.get("fused_attn", True)),
        )
        self.context = CopyGate(dim)

    def _skip_update(self, copied: Tensor) -> Tensor:
        """The copied update, gated per channel (B x H x W x C)."""
        return self.context(copied)

    def _before(self, x: Tensor, dense: bool) -> Tensor:
        """The E-block's update first, unless the layer runs every token (``dense``).
        x: B x H x W x C -> B x H x W x C."""
        return x if dense else x + self.little(x)  # (B, H, W, C)


def training_free_blocks(config: BigLittleConfig) -> nn.ModuleList:
    """The encoder's blocks in the training-free mode: SAM's blocks, the schedule applied; with
    ``little_correction``, each routed layer a :class:`CopyLittleBlock` (SAM's block, an E-block
    and a copy gate)."""
    schedule = routed_layers(config)
    corrected = config.little_correction
    return nn.ModuleList(
        (CopyLittleBlock if corrected and schedule[i] else TrainingFreeBlock)(
            config.embed_dim,
            config.num_heads,
            **sam_block_fields(config, i),
            fused_attn=config.fused_attn,
            select_window=config.window_size,
            routed=schedule[i],
            token_score=config.token_score,
            skip_rule=config.skip_rule,
            **({"little": little_fields(config)} if corrected and schedule[i] else {}),
        )
        for i in range(config.depth)
    )

"""The E-block (LITTLE): a narrow windowed transformer block that updates every token cheaply.

:class:`~biglittle_sam.modeling.blocks.BigLittleBlock` runs it on every token before its big block
(the P-block, SAM's own) updates the routed ones.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from segment_anything.modeling.common import MLPBlock
from torch import Tensor, nn

from .attention import Attention, window_partition, window_unpartition

__all__ = ["LittleBlock", "NormLayer", "default_norm"]

NormLayer = Callable[[int], nn.Module]
default_norm: NormLayer = partial(nn.LayerNorm, eps=1e-6)  # SAM's norm layer


class LittleBlock(nn.Module):
    """The E-block: a narrow windowed transformer block that updates every token cheaply.

    ``x -> gamma * Up(Block_d(Down(LN(x))))``, returned as the update to add to x. ``gamma`` starts
    at 0 (LayerScale), so a fresh E-block changes nothing and the encoder starts exactly at SAM.
    """

    def __init__(
        self,
        dim: int,
        little_dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        norm_layer: NormLayer = default_norm,
        act_layer: type = nn.GELU,
        fused_attn: bool = True,
    ) -> None:
        """
        Arguments:
          dim: residual width C.
          little_dim: E-block width d.
          num_heads: E-block attention heads.
          window_size: attention window side (E-blocks are windowed in every layer).
          mlp_ratio: E-block MLP width / d.
          norm_layer: normalization.
          act_layer: MLP activation.
          fused_attn: use scaled_dot_product_attention.
        """
        super().__init__()
        self.window_size = window_size
        self.norm = norm_layer(dim)
        self.down = nn.Linear(dim, little_dim)
        self.norm1 = norm_layer(little_dim)
        self.attn = Attention(
            little_dim,
            num_heads=num_heads,
            use_rel_pos=True,
            input_size=(window_size, window_size),
            fused=fused_attn,
        )
        self.norm2 = norm_layer(little_dim)
        self.mlp = MLPBlock(little_dim, int(little_dim * mlp_ratio), act=act_layer)
        self.up = nn.Linear(little_dim, dim)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: B x H x W x C -> the update, B x H x W x C."""
        B, H, W, _ = x.shape
        w = self.window_size
        h = self.down(self.norm(x))  # (B, H, W, d)
        hw, pad_hw = window_partition(h, w)  # (B*nW, w*w, d)
        hw = hw + self.attn(self.norm1(hw), (w, w))  # (B*nW, w*w, d)
        h = window_unpartition(hw, w, pad_hw, (H, W))  # (B, H, W, d)
        h = h + self.mlp(self.norm2(h))
        return self.gamma * self.up(h)

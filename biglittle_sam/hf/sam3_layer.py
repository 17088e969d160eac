"""SAM 3's ViT layer with training-free routing: :class:`BigLittleSam3ViTLayer`.

It IS transformers' ``Sam3ViTLayer`` (same modules, same parameter names, SAM 3's weights), with a
routed forward below keep ratio 1::

    xn = layer_norm1(x)
    s = score(xn)                          # "edge" | "window_mean" | "random" (not the layer)
    idx = top_k(s, k = ceil(r * w^2))      # per window of the windowed grid, in global layers too
    q = rope(q_proj(xn[idx]), pos[idx])    # each chosen query keeps ITS OWN position's rotation
    k, v = rope(k_proj(xn), pos), v_proj(xn)   # every token of the window (global: the image)
    x[idx] = x[idx] + o_proj(attention(q, k, v))
    x[idx] = x[idx] + mlp(layer_norm2(x[idx]))
    x[rest] = x + (update of the most similar chosen token of the window)   # skip_rule "copy"

This is SAM 1's training-free mode (:mod:`biglittle_sam.modeling.training_free`, whose scores,
choice and copy rule are reused here) on SAM 3's layer: semi-cross attention with 2D axial RoPE.
At keep ratio 1 (and in layers the schedule keeps dense) the layer runs SAM 3's own forward.

The LITTLE-block form (``training_free=False``) is SAM 1's :class:`BigLittleBlock` on SAM 3's
layer: this project's E-block (:class:`~biglittle_sam.modeling.little_block.LittleBlock`) and
:class:`~biglittle_sam.modeling.router.Router` beside it (``little.*``, ``router.*``)::

    x = x + little(x)                      # every token, width d, windowed; gamma starts at 0
    xn = layer_norm1(x);  s = router(xn)
    idx, w = top_k(s, k) per window (global layers: over the image), w = p / p.detach()
    x[idx] = x[idx] + w * o_proj(attention(rope q of xn[idx], rope k / v of every token))
    x[idx] = x[idx] + w * mlp(layer_norm2(x[idx]))     # skipped tokens keep the E-block's update
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.sam3.modeling_sam3 import (
    Sam3ViTLayer,
    Sam3ViTRoPEAttention,
    eager_attention_forward,
    rotate_pairwise,
)
from transformers.models.sam3.modeling_sam3 import window_partition as sam3_window_partition
from transformers.models.sam3.modeling_sam3 import window_unpartition as sam3_window_unpartition

from ..config import capacity
from ..modeling.attention import window_partition
from ..modeling.blocks import _Plan
from ..modeling.global_context import nearest_copy
from ..modeling.little_block import LittleBlock
from ..modeling.router import Router, select_tokens
from ..modeling.training_free import TrainingFreeBlock
from .sam3_config import BigLittleSam3ViTConfig, sam3_grid

__all__ = ["BigLittleSam3ViTLayer", "rope_semi_cross_attention"]


def _rotate(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """2D axial RoPE as SAM 3 applies it (in fp32, back to ``t``'s dtype). t: ... x L x hd;
    cos, sin: broadcastable to it."""
    f = t.float()
    return (f * cos + rotate_pairwise(f) * sin).type_as(t)


def rope_semi_cross_attention(
    attention: Sam3ViTRoPEAttention,
    q_in: Tensor,
    kv_in: Tensor,
    q_pos: Tensor,
    cos: Tensor,
    sin: Tensor,
) -> Tensor:
    """SAM 3's RoPE attention with chosen queries and every token as a key and a value.

    Arguments:
      attention: SAM 3's attention module (its q/k/v/o projections, heads and backend).
      q_in: G x k x C ``layer_norm1`` features of the chosen tokens of each group.
      kv_in: G x M x C ``layer_norm1`` features of every token of each group (window or image).
      q_pos: G x k long, each chosen token's position in its group (0..M-1).
      cos, sin: 1 x M x hd, the rotation of every position of a group (the layer's rotary
        embedding of its ``position_ids``).

    Returns:
      G x k x C, ``o_proj`` of the attention output (SAM 3's rows of those tokens when k = M and
      ``q_pos`` is 0..M-1).
    """
    G, k, C = q_in.shape
    M = kv_in.shape[1]
    nh, hd = attention.num_attention_heads, attention.head_dim
    query = attention.q_proj(q_in).view(G, k, nh, hd).transpose(1, 2)  # (G, nh, k, hd)
    key = attention.k_proj(kv_in).view(G, M, nh, hd).transpose(1, 2)  # (G, nh, M, hd)
    value = attention.v_proj(kv_in).view(G, M, nh, hd).transpose(1, 2)  # (G, nh, M, hd)
    cos_q = cos[0].index_select(0, q_pos.flatten()).view(G, 1, k, hd)  # (M, hd) -> (G, 1, k, hd)
    sin_q = sin[0].index_select(0, q_pos.flatten()).view(G, 1, k, hd)  # (M, hd) -> (G, 1, k, hd)
    query = _rotate(query, cos_q, sin_q)
    key = _rotate(key, cos, sin)  # (G, nh, M, hd)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attention.config._attn_implementation, eager_attention_forward
    )
    out, _ = interface(
        attention,
        query,
        key,
        value,
        attention_mask=None,
        dropout=attention.attention_dropout if attention.training else 0.0,
        scaling=attention.scaling,
        is_causal=False,
    )  # (G, k, nh, hd)
    return attention.o_proj(out.reshape(G, k, C))  # (G, k, C)


class BigLittleSam3ViTLayer(Sam3ViTLayer):
    """``Sam3ViTLayer`` that routes below keep ratio 1: training-free, or with an E-block and a
    router beside it (the LITTLE-block form, when its config says ``training_free=False``).

    The token score, the choice and the grid helpers are SAM 1's
    (:class:`~biglittle_sam.modeling.training_free.TrainingFreeBlock`'s, which read
    ``token_score`` and ``select_window``); the copy rule is
    :func:`~biglittle_sam.modeling.global_context.nearest_copy`; the E-block, the router and its
    ``p / p.detach()`` weight are :class:`~biglittle_sam.modeling.blocks.BigLittleBlock`'s.
    """

    _window_scores = TrainingFreeBlock._window_scores
    _windows = TrainingFreeBlock._windows
    _unwindow = TrainingFreeBlock._unwindow
    _choose = staticmethod(TrainingFreeBlock._choose)
    _selection = TrainingFreeBlock._selection  # selection_plan, cached per shape and ratio

    def __init__(
        self, config: BigLittleSam3ViTConfig, window_size: int = 0, routed: bool = True
    ) -> None:
        """
        Arguments:
          config: the backbone's config (its ``biglittle`` settings).
          window_size: the attention window side; 0 for a global layer (as ``Sam3ViTLayer``).
          routed: False runs SAM 3's layer on every token at every keep ratio (the schedule);
            in the LITTLE-block form only a routed layer has an E-block and a router.
        """
        super().__init__(config, window_size=window_size)
        settings = config.biglittle or {}
        self.select_window = config.select_window
        self.routed = routed
        self.token_score = settings.get("token_score", "edge")
        self.skip_rule = settings.get("skip_rule", "copy")
        self._plans: Dict[Tuple[Any, ...], _Plan] = {}
        self.little: Optional[LittleBlock] = None
        self.router: Optional[Router] = None
        if routed and not settings.get("training_free", True):
            # As SAM 1's BigLittleBlock: a windowed layer routes per attention window, a global
            # layer over the whole image (its chosen tokens are the image's best, not each
            # window's: no copy rule needs a chosen token in every window).
            self.select_window = window_size or sam3_grid(config)
            # SAM 1's E-block as it is: windowed attention with its own relative-position tables
            # (zeros at first, learned), no RoPE: it is trained from scratch, and one E-block
            # serves both SAMs. gamma = 0, so a fresh E-block changes nothing.
            self.little = LittleBlock(
                config.hidden_size,
                settings["little_dim"],
                settings["little_heads"],
                settings["little_window_size"],
                mlp_ratio=settings["little_mlp_ratio"],
            )
            self.router = Router(config.hidden_size)

    def forward(  # type: ignore[override]
        self, hidden_states: Tensor, keep_ratio: float = 1.0, **kwargs: Any
    ) -> Tensor:
        """B x H x W x C -> B x H x W x C; SAM 3's forward (after the E-block's update, if any)
        unless this layer routes at ``keep_ratio`` (fewer than every token of a group chosen)."""
        if self.little is not None:
            hidden_states = hidden_states + self.little(hidden_states)  # (B, H, W, C)
        w = self.select_window
        if not self.routed or capacity(keep_ratio, w * w) >= w * w:
            return super().forward(hidden_states, **kwargs)
        if self.router is not None:
            return self.learned_forward(hidden_states, keep_ratio)
        return self.routed_forward(hidden_states, keep_ratio)

    def _check_grid(self, H: int, W: int) -> None:
        """ValueError unless the B x H x W grid is the one this layer's positions are for."""
        w = self.select_window
        positions = self.position_ids.shape[0]
        if H % w or W % w or (self.window_size == 0 and H * W != positions):
            raise ValueError(
                f"a routed SAM 3 layer needs the token grid its config was built for (windows of "
                f"{w}, {positions} positions), got {H} x {W}: feed images of the config's "
                f"image_size ({self.config.image_size})"
            )

    def _attend(self, xn: Tensor, xn_g: Tensor, indices: Tensor, pos: Tensor) -> Tensor:
        """The chosen tokens' attention rows, T x C in ``pos`` order.

        Arguments:
          xn: B x H x W x C ``layer_norm1`` features; xn_g: G x M x C, the same in windows.
          indices: G x k chosen positions in each window; pos: T chosen rows of the stream.
        """
        B, H, W, C = xn.shape
        cos, sin = self.rotary_emb(xn, self.position_ids)  # (1, M or H * W, hd) each
        if self.window_size > 0:  # keys: the window; positions: in the window
            G, k = indices.shape
            q_in = xn_g.gather(1, indices.unsqueeze(-1).expand(G, k, C))  # (G, M, C) -> (G, k, C)
            out = rope_semi_cross_attention(self.attention, q_in, xn_g, indices, cos, sin)
            return out.reshape(G * k, C)  # (G, k, C) -> (T, C), window-major as pos
        kv_in = xn.reshape(B, H * W, C)  # keys: the whole image
        offsets = torch.arange(B, device=xn.device).unsqueeze(1) * (H * W)  # (B, 1)
        q_pos = pos.view(B, -1) - offsets  # (B, T / B) positions in the image
        q_in = kv_in.gather(1, q_pos.unsqueeze(-1).expand(*q_pos.shape, C))  # -> (B, T / B, C)
        out = rope_semi_cross_attention(self.attention, q_in, kv_in, q_pos, cos, sin)
        return out.reshape(-1, C)  # (B, T / B, C) -> (T, C)

    def _dense_attention(self, xn: Tensor) -> Tensor:
        """SAM 3's attention for every token (the "mlp_skip" rule), B x H x W x C."""
        H, W = xn.shape[1:3]
        h = xn
        if self.window_size > 0:
            h, pad_hw = sam3_window_partition(xn, self.window_size)  # (G, w, w, C)
        h, _ = self.attention(h, self.rotary_emb(h, self.position_ids))
        if self.window_size > 0:
            h = sam3_window_unpartition(h, self.window_size, pad_hw, (H, W))  # (B, H, W, C)
        return h

    def routed_forward(self, x: Tensor, keep_ratio: float) -> Tensor:
        """The routed layer: SAM 3's rows for each window's ``capacity(keep_ratio, w^2)`` chosen
        tokens, the skip rule for the others. x: B x H x W x C -> B x H x W x C. At a ratio that
        chooses every token it computes SAM 3's layer (up to float rounding)."""
        B, H, W, C = x.shape
        self._check_grid(H, W)
        xn = self.layer_norm1(x)  # (B, H, W, C)
        plan = self._selection(B, (H, W), keep_ratio, x.device)
        xn_g = window_partition(xn, self.select_window)[0]  # (G, M, C)
        scores = self._window_scores(xn, xn_g, plan, None)  # (G, M)
        indices, pos = self._choose(scores, plan)  # (G, k), (T,)
        flat = x.reshape(B * H * W, C)
        if self.skip_rule == "mlp_skip":
            flat = (x + self._dense_attention(xn)).reshape(B * H * W, C)
            rows = flat.index_select(0, pos)  # (B * H * W, C) -> (T, C)
        else:
            rows = flat.index_select(0, pos) + self._attend(xn, xn_g, indices, pos)  # (T, C)
        new = rows + self.dropout(self.mlp(self.layer_norm2(rows)))  # (T, C)
        if self.skip_rule == "copy":
            delta = (new - flat.index_select(0, pos)).view(indices.shape[0], -1, C)  # (G, k, C)
            copied = nearest_copy(xn_g, indices, delta)  # (G, M, C)
            flat = (x + self._unwindow(copied, (H, W))).reshape(B * H * W, C)
        return flat.index_copy(0, pos, new).view(B, H, W, C)  # (T, C) -> (B * H * W, C)

    def learned_forward(self, x: Tensor, keep_ratio: float) -> Tensor:
        """The LITTLE-block form's routed layer (after the E-block): SAM 3's attention and MLP
        updates for each group's ``capacity(keep_ratio, group)`` tokens of highest router logit,
        scaled by the router weight (1 in value, a gradient to the router); the other tokens keep
        their stream. x: B x H x W x C -> B x H x W x C."""
        B, H, W, C = x.shape
        self._check_grid(H, W)
        xn = self.layer_norm1(x)  # (B, H, W, C)
        plan = self._selection(B, (H, W), keep_ratio, x.device)
        logits = self._windows(self.router(xn))  # (B, H, W) -> (G, M)
        G, M = logits.shape
        indices, weights = select_tokens(logits, plan.kmax)  # (G, k), (G, k, 1) or None
        flat_idx = (indices + torch.arange(G, device=x.device).unsqueeze(1) * M).flatten()
        pos = plan.grid_index.index_select(0, flat_idx)  # (G * k,) group positions -> rows
        xn_g = window_partition(xn, self.select_window)[0]  # (G, M, C)
        flat = x.reshape(B * H * W, C)
        rows = flat.index_select(0, pos)  # (B * H * W, C) -> (T, C)
        scale = None if weights is None else weights.reshape(-1, 1)  # (G, k, 1) -> (T, 1)
        update = self._attend(xn, xn_g, indices, pos)  # (T, C)
        rows = rows + (update if scale is None else scale * update)
        update = self.dropout(self.mlp(self.layer_norm2(rows)))  # (T, C)
        rows = rows + (update if scale is None else scale * update)
        return flat.index_copy(0, pos, rows).view(B, H, W, C)  # (T, C) -> (B * H * W, C)

"""The training-free routing mode: SAM's own blocks and official weights, no E-blocks, no routers.

A routed layer runs SAM's block (its weights unchanged) on ``k = ceil(r * w^2)`` tokens of each
w x w window and gives the others an update without running the block on them:

    xn = norm1(x)
    s = score(xn)                     # "window_mean" | "random" | "edge": never runs the block
    idx = top_k(s, k) per window      # windows of the windowed grid, in global layers too
    x[idx] = Block(x)[idx]            # SAM's row: every token of the group is a key and a value
    x[rest] = x + (Block(x) - x)[match]   # "copy": match = the most similar chosen token of the
                                          #   window (cosine of norm1 features)
            | x                           # "identity"
            | x + Attn(x)                 # "mlp_skip": every token is a query, the MLP runs on idx

Global layers choose per window of the windowed grid too (so every window has chosen tokens to
copy from, and matching costs N k C, not N r N C); their chosen tokens attend to the whole image.
Layers in ``dense_layers`` (the first, by default) and, with ``dense_global``, the global layers
run SAM's block on every token. At keep ratio 1 every layer is SAM's block: the output is SAM's.

The chosen tokens' rows come from :class:`~biglittle_sam.modeling.blocks.BigLittleBlock`'s routed
path (semi-cross attention, the update of the routed rows), which for SAM's block computes exactly
SAM's rows; :class:`TrainingFreeBlock` inherits that path and builds neither an E-block nor a
router, so the model's state dict is exactly SAM's.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import (
    SKIP_RULES,
    TOKEN_SCORES,
    BigLittleConfig,
    capacity,
    validate_skip_rule,
    validate_token_score,
    window_capacities,
)
from .attention import window_partition, window_unpartition
from .blocks import BigBlock, BigLittleBlock, _Plan, _to_slots
from .global_context import nearest_copy
from .router import penalize_padding

__all__ = [
    "TrainingFreeBlock",
    "routed_layers",
    "selection_plan",
    "TOKEN_SCORES",
    "SKIP_RULES",
]


def routed_layers(config: BigLittleConfig) -> Tuple[bool, ...]:
    """Per layer, whether the training-free mode routes it (the schedule), from ``config``'s
    ``dense_layers`` and ``dense_global``."""
    globals_ = set(config.global_attn_indexes)
    return tuple(
        i not in config.dense_layers and not (config.dense_global and i in globals_)
        for i in range(config.depth)
    )


def selection_plan(
    B: int, grid: Tuple[int, int], keep_ratio: float, window: int, device: torch.device
) -> _Plan:
    """The static layout of a per-window choice of ``capacity(keep_ratio, w^2)`` tokens.

    Arguments:
      B: images in the batch; grid: (H, W) token grid; keep_ratio: share of each window's real
        tokens chosen; window: window side w; device: where the index tensors live.

    Returns:
      A :class:`~biglittle_sam.modeling.blocks._Plan` over the G = B * nW windows: ``kmax`` slots
      per window; ``slots`` (T indices into G x kmax, ascending) and ``valid`` (G x kmax) when an
      edge window chooses fewer (``window_capacities``), else None; ``grid_index``, the G * M row
      of the B x H x W stream for each window position (-1 at window padding).
    """
    H, W = grid
    kmax = capacity(keep_ratio, window * window)
    rows = torch.arange(B * H * W, device=device).view(B, H, W, 1)
    grid_index = window_partition(rows, window, pad_value=-1)[0].flatten()  # (G, M, 1) -> (G * M,)
    caps = window_capacities(keep_ratio, grid, window)
    if all(c == kmax for c in caps):
        return _Plan(kmax, None, None, grid_index)
    cap = torch.tensor(caps, device=device).repeat(B)  # (G,)
    valid = torch.arange(kmax, device=device) < cap.unsqueeze(1)  # (G, kmax)
    # The batch enters only through tensor ops (no Python loop over B), so an ONNX trace keeps
    # the batch dimension dynamic, as BigLittleBlock._plan does.
    per_image = [g * kmax + j for g, c in enumerate(caps) for j in range(c)]
    base = torch.tensor(per_image, device=device)  # (T / B,)
    offsets = torch.arange(B, device=device).unsqueeze(1) * (len(caps) * kmax)  # (B, 1)
    return _Plan(kmax, (offsets + base).flatten(), valid, grid_index)  # (B, T / B) -> (T,)


class TrainingFreeBlock(BigLittleBlock):
    """SAM's block in the training-free mode: chosen tokens take its rows, the others a rule.

    It subclasses :class:`BigLittleBlock` for the routed path only (semi-cross attention and the
    update of the routed rows); ``__init__`` builds SAM's block alone, so there is no E-block and no
    router, and the state-dict keys are exactly ``segment_anything``'s ``Block``'s.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: Tuple[int, int] = (64, 64),
        fused_attn: bool = True,
        select_window: int = 14,
        routed: bool = True,
        token_score: str = "edge",
        skip_rule: str = "copy",
    ) -> None:
        """
        Arguments:
          dim, num_heads, mlp_ratio, qkv_bias, use_rel_pos, window_size, input_size, fused_attn:
            as :class:`BigBlock` (SAM's block; ``window_size`` 0 for global attention).
          select_window: side of the windows tokens are chosen (and matched) in; the windowed
            layers' ``window_size``, in global layers too.
          routed: False runs SAM's block on every token at every keep ratio (the schedule).
          token_score: one of :data:`TOKEN_SCORES`; skip_rule: one of :data:`SKIP_RULES`.
        """
        BigBlock.__init__(
            self,
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
            input_size=input_size,
            fused_attn=fused_attn,
        )
        if window_size and select_window != window_size:
            raise ValueError(
                f"a windowed layer chooses tokens in its attention windows: select_window "
                f"{select_window} must equal window_size {window_size}"
            )
        self.select_window = select_window
        self.routed = routed
        self.token_score = validate_token_score(token_score)
        self.skip_rule = validate_skip_rule(skip_rule)
        self.routing = "learned"  # set by the encoder; unused here (the mode has no routers)
        self._plans: Dict[Tuple[Any, ...], _Plan] = {}

    def _selection(
        self, B: int, grid: Tuple[int, int], keep_ratio: float, device: torch.device
    ) -> _Plan:
        """:func:`selection_plan` for this layer, cached as :meth:`BigLittleBlock._plan` is."""
        key = (B, grid, keep_ratio, str(device))
        cache = not (torch.compiler.is_compiling() or torch.is_inference_mode_enabled())
        if cache and key in self._plans:
            return self._plans[key]
        plan = selection_plan(B, grid, keep_ratio, self.select_window, device)
        if cache:
            self._plans[key] = plan
        return plan

    def _window_scores(
        self, xn: Tensor, xn_g: Tensor, plan: _Plan, padding: Optional[Tensor]
    ) -> Tensor:
        """Token scores in window layout, G x M; -inf at window padding (never chosen).

        Arguments:
          xn: B x H x W x C norm1 features; xn_g: G x M x C, the same in windows (zero padded).
          plan: the selection plan (its ``grid_index`` marks window padding with -1).
          padding: B x H x W bool image-padding tokens (routed last: penalize_padding), or None.
        """
        real = (plan.grid_index >= 0).view(xn_g.shape[:2])  # (G, M)
        if self.token_score == "window_mean":
            count = real.sum(dim=1, keepdim=True).clamp(min=1).unsqueeze(-1)  # (G, 1, 1)
            mean = xn_g.sum(dim=1, keepdim=True) / count  # (G, 1, C); padding rows are zero
            scores = (xn_g - mean).square().sum(dim=-1)  # (G, M)
        elif self.token_score == "edge":
            dx = F.pad((xn[:, :, 1:] - xn[:, :, :-1]).square().sum(-1), (0, 1))  # (B, H, W)
            dy = F.pad((xn[:, 1:] - xn[:, :-1]).square().sum(-1), (0, 0, 0, 1))  # (B, H, W)
            scores = self._windows(dx + dy)  # (G, M)
        else:  # "random"
            scores = torch.rand(real.shape, device=xn.device, dtype=xn.dtype)
        if padding is not None:
            scores = penalize_padding(scores, self._windows(padding.to(scores.dtype)) > 0)
        return scores.masked_fill(~real, float("-inf"))

    def _windows(self, t: Tensor) -> Tensor:
        """B x H x W -> G x M, in the selection windows (zero padded)."""
        return window_partition(t.unsqueeze(-1), self.select_window)[0].squeeze(-1)

    def _unwindow(self, g: Tensor, hw: Tuple[int, int]) -> Tensor:
        """G x M x D (selection windows) -> B x H x W x D, dropping window padding."""
        w = self.select_window
        pad_hw = (hw[0] + (w - hw[0] % w) % w, hw[1] + (w - hw[1] % w) % w)
        return window_unpartition(g, w, pad_hw, hw)

    @staticmethod
    def _choose(scores: Tensor, plan: _Plan) -> Tuple[Tensor, Tensor]:
        """Each window's top ``plan.kmax`` tokens.

        Arguments:
          scores: G x M window scores; plan: the selection plan.

        Returns:
          indices: G x kmax in-window positions (best first when edge windows use a prefix).
          pos: T rows of the B x H x W stream that are chosen, batch-major.
        """
        G, M = scores.shape
        indices = scores.topk(plan.kmax, dim=1, sorted=plan.slots is not None).indices  # (G, kmax)
        flat = (indices + torch.arange(G, device=scores.device).unsqueeze(1) * M).flatten()
        if plan.slots is not None:
            flat = flat.index_select(0, plan.slots)  # (G * kmax,) -> (T,)
        return indices, plan.grid_index.index_select(0, flat)  # (T,) window positions -> rows

    def _chosen_rows(
        self, x: Tensor, xn: Tensor, plan: _Plan, indices: Tensor, pos: Tensor, pooled: bool
    ) -> Tuple[Tensor, Tensor]:
        """SAM's block rows of the chosen tokens (semi-cross attention, then the MLP).

        Arguments:
          x, xn: B x H x W x C stream and its norm1; plan, indices, pos: the choice
            (:meth:`_choose`); pooled: pool the others' keys/values 2 x 2 (``pool_kv``).

        Returns:
          out: (B * H * W) x C, the chosen rows updated and the others unchanged.
          gather_idx: T x C, the chosen rows' index into it.
        """
        B, H, W, C = x.shape
        T = pos.shape[0]
        gather_idx = pos.unsqueeze(-1).expand(T, C)  # (T, C)
        xn_sel = xn.reshape(B * H * W, C).gather(0, gather_idx)  # (B * H * W, C) -> (T, C)
        if self.window_size == 0:  # one group per image: chosen tokens attend to all H * W
            plan = _Plan(T // B, None, None, None)
            offsets = torch.arange(B, device=x.device).unsqueeze(1) * (H * W)
            indices = pos.view(B, T // B) - offsets  # (B, T / B) positions in the image
        selected = self._selected(pos, (B, H, W)) if pooled else None
        attn = self._attend_routed(xn, xn_sel, plan, indices, selected)  # (G, kmax, C)
        out = self._update_routed(x.reshape(B * H * W, C), gather_idx, attn, None, plan.slots)
        return out, gather_idx

    def _copied(
        self, delta: Tensor, xn_g: Tensor, indices: Tensor, plan: _Plan, hw: Tuple[int, int]
    ) -> Tensor:
        """Each token's copy of its window's most similar chosen token's update.

        Arguments:
          delta: T x C updates of the chosen tokens (block output - input), in ``pos`` order.
          xn_g: G x M x C norm1 features in the selection windows.
          indices: G x kmax in-window positions of the chosen tokens; plan: the selection plan.
          hw: (H, W).

        Returns:
          B x H x W x C (a chosen token gets its own update: it is its own best match).
        """
        delta_g = _to_slots(delta, plan, xn_g.shape[0])  # (T, C) -> (G, kmax, C)
        # Unused slots of edge windows (plan.valid False) are never a match; window padding
        # rows of xn_g are zero.
        copied = nearest_copy(xn_g, indices, delta_g, plan.valid)  # (G, M, C)
        return self._unwindow(copied, hw)  # (B, H, W, C)

    def _before(self, x: Tensor, dense: bool) -> Tensor:
        """What runs before the choice (B x H x W x C; ``dense``: the layer runs every token):
        nothing here; the E-block in :class:`~biglittle_sam.modeling.copy_little.CopyLittleBlock`.
        """
        return x

    def _skip_update(self, copied: Tensor) -> Tensor:
        """What a skipped token adds (B x H x W x C): the copied update itself here; a learned
        gate on it in :class:`~biglittle_sam.modeling.copy_little.CopyLittleBlock`."""
        return copied

    def _mlp_skip(self, x: Tensor, xn: Tensor, pos: Tensor) -> Tensor:
        """SparseSAM's rule: SAM's attention for every token, the MLP for the rows ``pos`` only.

        x, xn: B x H x W x C; pos: T chosen rows of the stream. Returns B x H x W x C.
        """
        B, H, W, C = x.shape
        kv_g = self._kv_groups(xn)  # (G, M, 2C)
        out = self.attn.attend(self._to_groups(xn), kv_g, None, self._group_grid(H, W))
        rows = (x + self._from_groups(out, (H, W))).reshape(B * H * W, C)  # (B * H * W, C)
        gather_idx = pos.unsqueeze(-1).expand(pos.shape[0], C)  # (T, C)
        h = rows.gather(0, gather_idx)  # (B * H * W, C) -> (T, C)
        h = h + self.mlp(self.norm2(h))
        return rows.scatter(0, gather_idx, h).view(B, H, W, C)  # (T, C) -> (B * H * W, C)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        keep_ratio: float = 1.0,
        return_routing: bool = False,
        padding: Optional[Tensor] = None,
        pool_kv: bool = False,
    ) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor, int, int]]]:
        """
        Arguments:
          x: B x H x W x C residual stream.
          keep_ratio: share of each window's tokens that take SAM's block.
          return_routing: also return what :class:`LayerRouting` needs.
          padding: B x H x W bool image-padding tokens (chosen last), or None.
          pool_kv: the chosen tokens' keys/values at full resolution, the others' pooled 2 x 2
            (not "mlp_skip", whose attention is dense).

        Returns:
          x: B x H x W x C.
          routing: (scores B x H x W, chosen B x H x W bool, kmax per window, chosen tokens per
            image) or None.
        """
        w = self.select_window
        dense = not self.routed or capacity(keep_ratio, w * w) >= w * w
        x = self._before(x, dense)  # (B, H, W, C)
        B, H, W, C = x.shape
        xn = self.norm1(x)  # (B, H, W, C)
        if dense and not return_routing:
            return self.forward_dense(x, xn), None
        plan = self._selection(B, (H, W), keep_ratio, x.device)
        xn_g = window_partition(xn, w)[0]  # (G, M, C), zero padded
        scores_g = self._window_scores(xn, xn_g, plan, padding)  # (G, M)
        if dense:
            scores = self._unwindow(scores_g.unsqueeze(-1), (H, W)).squeeze(-1)  # (B, H, W)
            everything = torch.ones_like(scores, dtype=torch.bool)
            return self.forward_dense(x, xn), (scores, everything, w * w, H * W)
        indices, pos = self._choose(scores_g, plan)  # (G, kmax), (T,)
        chosen = self._selected(pos, (B, H, W))  # (B, H, W) bool
        if self.skip_rule == "mlp_skip":
            out = self._mlp_skip(x, xn, pos)
        else:
            rows, gather_idx = self._chosen_rows(x, xn, plan, indices, pos, pool_kv)
            out = rows.view(B, H, W, C)
            if self.skip_rule == "copy":
                delta = rows.gather(0, gather_idx) - x.reshape(B * H * W, C).gather(0, gather_idx)
                copied = self._copied(delta, xn_g, indices, plan, (H, W))  # (B, H, W, C)
                out = torch.where(chosen.unsqueeze(-1), out, x + self._skip_update(copied))
        if not return_routing:
            return out, None
        scores = self._unwindow(scores_g.unsqueeze(-1), (H, W)).squeeze(-1)  # (B, H, W)
        return out, (scores, chosen, plan.kmax, pos.shape[0] // B)

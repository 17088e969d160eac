"""The P-block (big, SAM's own block) and the layer that combines it with the E-block (LITTLE,
:mod:`.little_block`).

One big.LITTLE layer:

    x = x + gamma * Up(Little(Down(LN(x))))     # E-block: every token, width d, windowed
    s = Router(norm1(x))                         # one logit per token
    idx = top_k(s, ceil(r * group))              # group: a w x w window or the whole grid
    x[idx] += BigAttn(q = norm1(x)[idx], kv = norm1(x)[group])   # semi-cross attention
    x[idx] += BigMLP(norm2(x[idx]))

Edge windows route ceil(r * real tokens); ``pool_kv`` pools unrouted keys/values 2 x 2; a global
layer's ``context`` (:mod:`.global_context`, optional) then updates the tokens it skipped.

``BigLittleBlock`` subclasses ``BigBlock``, so its state-dict keys for the big path (``norm1``,
``attn.qkv``, ``attn.proj``, ``attn.rel_pos_h/w``, ``norm2``, ``mlp.lin1/lin2``) are exactly those
of ``segment_anything``'s ``Block`` and a SAM checkpoint loads into it without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from segment_anything.modeling.common import MLPBlock
from torch import Tensor, nn

from ..config import capacity, window_capacities
from .attention import Attention, window_partition, window_unpartition
from .little_block import LittleBlock, NormLayer, default_norm
from .router import Router, penalize_padding, select_tokens

__all__ = ["BigBlock", "LittleBlock", "BigLittleBlock", "LayerRouting"]


@dataclass
class LayerRouting:
    """Where one layer sent its compute.

    Attributes:
      layer: block index.
      kind: "window" or "global".
      capacity: tokens per group that take the big path (static).
      scores: B x H x W router logits.
      selected: B x H x W bool, True for tokens the big block updated.
      indices: B x S flat positions (row * W + col) of the selected tokens, ascending; S is the same
        for every image of the batch because capacity is static.
    """

    layer: int
    kind: str
    capacity: int
    scores: Tensor
    selected: Tensor
    indices: Tensor


def _sum_2x2(x: Tensor) -> Tensor:
    """Sums over 2 x 2 blocks. x: B x H x W x D (H, W even) -> B x H/2 x W/2 x D. Two strided
    additions over whole D-wide rows (much faster on CPU than ``sum`` over the block dims)."""
    B, H, W, D = x.shape
    v = x.view(B, H // 2, 2, W // 2, 2, D)
    cols = v[:, :, :, :, 0] + v[:, :, :, :, 1]  # (B, H/2, 2, W/2, D)
    return cols[:, :, 0] + cols[:, :, 1]  # (B, H/2, W/2, D)


class _Plan(NamedTuple):
    """The static layout of a routed layer (shapes only, never data).

    Attributes:
      kmax: query slots per group (``capacity(r, group)``).
      slots: T indices into (G x kmax) of the slots that hold a routed token, ascending, or None
        when every slot does. Edge windows of a padded grid route only ``capacity(r, real
        tokens)`` (:func:`~biglittle_sam.config.window_capacities`); their other slots are dropped
        before the projections and the MLP and masked as keys.
      valid: G x kmax bool, True at used slots (None with ``slots``).
      grid_index: G * M row of the B x H x W stream for each window position (-1 at padding), or
        None for global layers, whose group layout is the stream itself.
    """

    kmax: int
    slots: Optional[Tensor]
    valid: Optional[Tensor]
    grid_index: Optional[Tensor]


def _to_slots(t: Tensor, plan: _Plan, G: int) -> Tensor:
    """T x D routed rows -> G x kmax x D query slots (unused slots zero)."""
    if plan.slots is None:
        return t.view(G, plan.kmax, -1)
    full = t.new_zeros(G * plan.kmax, t.shape[-1])
    return full.index_copy(0, plan.slots, t).view(G, plan.kmax, -1)  # (T, D) -> (G, kmax, D)


class BigBlock(nn.Module):
    """SAM's transformer block (``segment_anything.modeling.image_encoder.Block``), same parameters.

    ``forward`` runs it on every token exactly as SAM does. ``BigLittleBlock`` runs it on routed
    tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: NormLayer = default_norm,
        act_layer: type = nn.GELU,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: Tuple[int, int] = (64, 64),
        fused_attn: bool = True,
    ) -> None:
        """
        Arguments:
          dim: token width C.
          num_heads: attention heads.
          mlp_ratio: MLP hidden width / C.
          qkv_bias: bias on the qkv projection.
          norm_layer: normalization (SAM: LayerNorm, eps 1e-6).
          act_layer: MLP activation (SAM: GELU).
          use_rel_pos: SAM's decomposed relative position bias.
          window_size: window side; 0 for global attention.
          input_size: token grid (H, W) of the image.
          fused_attn: use scaled_dot_product_attention.
        """
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
            fused=fused_attn,
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)

    def _kv_groups(self, xn: Tensor) -> Tensor:
        """Keys and values of every token, laid out by attention group.

        Arguments:
          xn: B x H x W x C, ``norm1`` of the residual stream.

        Returns:
          G x M x 2C keys and values per group (a padded window position holds the kv bias, what
          SAM's zero padding projects to).
        """
        B, H, W, C = xn.shape
        if self.window_size == 0:
            return self.attn.project_kv(xn.reshape(B, H * W, C))  # (B, N, 2C)
        # Projecting only the H x W real tokens and padding with the bias afterwards equals SAM's
        # projection of its zero-padded windows, at (Hp * Wp - H * W) fewer projected tokens.
        kv_g, _ = window_partition(self.attn.project_kv(xn, bias=False), self.window_size)
        kv_bias = self.attn.kv_bias(C)
        return kv_g if kv_bias is None else kv_g + kv_bias  # (B * nW, w * w, 2C)

    def _to_groups(self, x: Tensor, pad_value: float = 0.0) -> Tensor:
        """B x H x W x ... -> G x M x ..., the group layout of :meth:`_kv_groups`."""
        if self.window_size == 0:
            return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])  # (B, N, ...)
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(-1)  # (B, H, W, 1)
        groups, _ = window_partition(x, self.window_size, pad_value)  # (G, M, ...)
        return groups.squeeze(-1) if squeeze else groups

    def _group_grid(self, H: int, W: int) -> Tuple[int, int]:
        """The grid of one attention group: a window, or the whole image in global layers."""
        return (H, W) if self.window_size == 0 else (self.window_size, self.window_size)

    def _from_groups(self, g: Tensor, hw: Tuple[int, int]) -> Tensor:
        """G x M x C -> B x H x W x C, inverse of :meth:`_to_groups` (drops window padding)."""
        if self.window_size == 0:
            return g.view(g.shape[0], hw[0], hw[1], g.shape[-1])  # (B, H, W, C)
        w = self.window_size
        pad_hw = (hw[0] + (w - hw[0] % w) % w, hw[1] + (w - hw[1] % w) % w)
        return window_unpartition(g, w, pad_hw, hw)

    def forward_dense(self, x: Tensor, xn: Tensor) -> Tensor:
        """SAM's block on every token. x, xn: B x H x W x C (xn = norm1(x)) -> B x H x W x C."""
        kv_g = self._kv_groups(xn)  # (G, M, 2C)
        xn_g = self._to_groups(xn)  # (G, M, C); windows padded with zeros, as SAM pads
        out = self.attn.attend(xn_g, kv_g, None, self._group_grid(*xn.shape[1:3]))  # (G, M, C)
        x = x + self._from_groups(out, x.shape[1:3])  # (B, H, W, C)
        return x + self.mlp(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: B x H x W x C -> B x H x W x C, as ``segment_anything``'s ``Block``."""
        return self.forward_dense(x, self.norm1(x))


class BigLittleBlock(BigBlock):
    """One big.LITTLE layer: an E-block on every token, then SAM's block on the routed tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        little_dim: int,
        little_heads: int,
        mlp_ratio: float = 4.0,
        little_mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: NormLayer = default_norm,
        act_layer: type = nn.GELU,
        use_rel_pos: bool = True,
        window_size: int = 0,
        little_window_size: int = 14,
        input_size: Tuple[int, int] = (64, 64),
        fused_attn: bool = True,
    ) -> None:
        """
        Arguments:
          dim, num_heads, mlp_ratio, qkv_bias, norm_layer, act_layer, use_rel_pos, window_size,
            input_size, fused_attn: as :class:`BigBlock` (the P-block, SAM's block).
          little_dim, little_heads, little_mlp_ratio: E-block width, heads and MLP ratio.
          little_window_size: E-block window side (the E-block is windowed in global layers too).
        """
        super().__init__(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            act_layer=act_layer,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
            input_size=input_size,
            fused_attn=fused_attn,
        )
        self.little = LittleBlock(
            dim,
            little_dim,
            little_heads,
            little_window_size,
            mlp_ratio=little_mlp_ratio,
            norm_layer=norm_layer,
            act_layer=act_layer,
            fused_attn=fused_attn,
        )
        self.router = Router(dim)
        self.routing = "learned"  # "random" / "update_norm": ablations (see ROUTING_MODES)
        self._plans: Dict[Tuple[Any, ...], _Plan] = {}  # static layouts, see _plan
        self.context: Optional[nn.Module] = None  # global layers, see global_context.py

    def _scores(self, x: Tensor, xn: Tensor, padding: Optional[Tensor] = None) -> Tensor:
        """Router logits, B x H x W: uniform noise when ``routing`` is "random", the norms of
        :meth:`update_norm` when it is "update_norm". Tokens where ``padding`` (B x H x W
        bool) is True go below every real token (:func:`penalize_padding`), so they are routed
        only when a group has nothing else (still in their own order, and with a gradient)."""
        if self.routing == "random":
            scores = torch.rand(xn.shape[:-1], device=xn.device, dtype=xn.dtype)
        elif self.routing == "update_norm":
            scores = self.update_norm(x, xn).to(xn.dtype)
        else:
            scores = self.router(xn)
        if padding is None:
            return scores
        return penalize_padding(scores, padding)

    @torch.no_grad()
    def update_norm(self, x: Tensor, xn: Tensor) -> Tensor:
        """How much the big block would change each token: ``||Block(x) - x||``, B x H x W (fp32).

        A skipped token loses this update, so it is a routing heuristic (``routing =
        "update_norm"``; on the proxy student as good as the learned routers); runs densely.

        Arguments:
          x, xn: B x H x W x C tokens and their norm1.
        """
        return (self.forward_dense(x, xn) - x).float().norm(dim=-1)  # (B, H, W)

    def _plan(
        self, B: int, grid: Tuple[int, int], keep_ratio: float, device: torch.device
    ) -> _Plan:
        """The static layout of one routed layer for a batch of ``B`` grids (see :class:`_Plan`).

        Built from shapes only, once per (batch, grid, ratio, device) and cached, so later passes
        make no host-to-device copies. Not cached while ``torch.compile`` traces (the tensors
        become graph constants) or under inference mode (its tensors cannot be saved for a later
        backward pass).
        """
        key = (B, grid, keep_ratio, str(device))
        cache = not (torch.compiler.is_compiling() or torch.is_inference_mode_enabled())
        if cache and key in self._plans:
            return self._plans[key]
        H, W = grid
        if self.window_size == 0:
            plan = _Plan(capacity(keep_ratio, H * W), None, None, None)
        else:
            w = self.window_size
            kmax = capacity(keep_ratio, w * w)
            caps = window_capacities(keep_ratio, grid, w)
            # Where each window position lives in the B x H x W stream (-1: padding).
            rows = torch.arange(B * H * W, device=device).view(B, H, W, 1)
            grid_index, _ = window_partition(rows, w, pad_value=-1)  # (G, M, 1)
            slots = valid = None
            if any(c != kmax for c in caps):
                cap = torch.tensor(caps, device=device).repeat(B)  # (B * nW,)
                valid = torch.arange(kmax, device=device) < cap.unsqueeze(1)  # (B * nW, kmax)
                per_image = [g * kmax + j for g, c in enumerate(caps) for j in range(c)]
                base = torch.tensor(per_image, device=device)  # (T / B,)
                offsets = torch.arange(B, device=device).unsqueeze(1) * (len(caps) * kmax)
                slots = (offsets + base).flatten()  # (B, T / B) -> (T,)
            plan = _Plan(kmax, slots, valid, grid_index.flatten())
        if cache:
            self._plans[key] = plan
        return plan

    def _pooled_kv(self, xn: Tensor, selected: Tensor) -> Tuple[Tensor, Tensor]:
        """Keys/values of the unrouted tokens, averaged over 2 x 2 blocks, in group layout.

        Arguments:
          xn: B x H x W x C normalized tokens.
          selected: B x H x W bool, the routed tokens.

        Returns:
          kv_pool: G x P x 2C (P = M / 4 blocks per group, row-major). Padded blocks of edge
            windows hold the projection of zeros (the bias), as SAM's padded tokens do.
          log_count: G x P, log of the unrouted tokens per block (-inf where all four are routed;
            log 4 for padded blocks, whose four zero tokens are keys in SAM's windows).
        """
        B, H, W, C = xn.shape
        rest = (~selected).to(xn.dtype).unsqueeze(-1)  # (B, H, W, 1)
        total = _sum_2x2(xn * rest)  # (B, H, W, C) -> (B, H/2, W/2, C)
        count = _sum_2x2(rest).squeeze(-1)  # (B, H/2, W/2)
        mean = total / count.clamp(min=1).unsqueeze(-1)  # (B, H/2, W/2, C)
        kv = self.attn.project_kv(mean, bias=False)  # (B, H/2, W/2, 2C)
        if self.window_size == 0:
            kv_g = kv.reshape(B, -1, 2 * C)  # (B, P, 2C)
            count_g = count.reshape(B, -1)  # (B, P)
        else:
            half = self.window_size // 2
            kv_g, _ = window_partition(kv, half)  # (G, P, 2C); padded blocks: 0
            count_g, _ = window_partition(count.unsqueeze(-1), half, pad_value=4.0)  # (G, P, 1)
            count_g = count_g.squeeze(-1)  # (G, P)
        bias = self.attn.kv_bias(C)
        if bias is not None:
            kv_g = kv_g + bias
        return kv_g, count_g.log()

    def _route(self, scores: Tensor, plan: _Plan) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """Each group's top ``plan.kmax`` tokens by router logit.

        Arguments:
          scores: B x H x W router logits.
          plan: the layer's static layout (:meth:`_plan`).

        Returns:
          indices: G x kmax positions of the chosen tokens within their group (of M).
          weights: G x kmax router weights of the chosen tokens, or None.
          pos: T rows of the B x H x W stream that take the big path.
        """
        logits_g = self._to_groups(scores, pad_value=float("-inf"))  # (G, M); padding never wins
        G, M = logits_g.shape
        slots = plan.slots
        # Sorted when an edge window keeps fewer than kmax: its first slots are its best tokens.
        indices, weights = select_tokens(logits_g, plan.kmax, sorted=slots is not None)  # (G, kmax)
        offsets = torch.arange(G, device=scores.device).unsqueeze(1) * M  # (G, 1)
        flat = indices + offsets  # (G, kmax) in G * M
        pos = flat.flatten() if slots is None else flat.flatten().index_select(0, slots)  # (T,)
        if plan.grid_index is not None:  # window position -> row of the B x H x W stream
            pos = plan.grid_index.index_select(0, pos)  # (T,); routed tokens are never padding
        return indices, weights, pos

    @staticmethod
    def _selected(pos: Tensor, shape: Tuple[int, int, int]) -> Tensor:
        """B x H x W bool, True at the T routed rows ``pos`` of the B x H x W stream."""
        B, H, W = shape
        chosen = torch.zeros(B * H * W, dtype=torch.bool, device=pos.device)
        routed = torch.ones_like(pos, dtype=torch.bool)  # (T,)
        return chosen.scatter(0, pos, routed).view(B, H, W)  # (T,) -> (B * H * W,)

    def _attend_routed(
        self, xn: Tensor, xn_sel: Tensor, plan: _Plan, indices: Tensor, pooled: Optional[Tensor]
    ) -> Tensor:
        """The routed tokens' attention over their groups, before the output projection.

        Arguments:
          xn: B x H x W x C, ``norm1`` of the residual stream.
          xn_sel: T x C, its routed rows.
          plan: the layer's static layout; indices: G x kmax in-group positions of the queries.
          pooled: B x H x W bool routed tokens when the others' keys and values are pooled 2 x 2
            (``pool_kv``), else None: every token is a key and a value.

        Returns:
          G x kmax x C.
        """
        C, G = xn.shape[-1], indices.shape[0]
        grid = self._group_grid(*xn.shape[1:3])
        if pooled is not None:
            qkv = self.attn.qkv(xn_sel)  # (T, 3C): queries, and the routed tokens' keys/values
            kv_pool, log_count = self._pooled_kv(xn, pooled)  # (G, P, 2C), (G, P)
            return self.attn.attend_pooled(
                _to_slots(qkv[:, :C], plan, G),
                _to_slots(qkv[:, C:], plan, G),
                plan.valid,
                kv_pool,
                log_count,
                indices,
                grid,
            )  # (G, kmax, C)
        kv_g = self._kv_groups(xn)  # (G, M, 2C): every token is a key and a value
        q = _to_slots(self.attn.project_q(xn_sel), plan, G)  # (G, kmax, C)
        return self.attn.attend_heads(q, kv_g, indices, grid)  # (G, kmax, C)

    def _update_routed(
        self,
        x_rows: Tensor,
        gather_idx: Tensor,
        attn: Tensor,
        weights: Optional[Tensor],
        slots: Optional[Tensor],
    ) -> Tensor:
        """The big block's attention and MLP updates of the routed rows, scattered into the stream.

        Arguments:
          x_rows: (B * H * W) x C residual stream; gather_idx: T x C, its routed rows.
          attn: G x kmax x C attention output (:meth:`_attend_routed`).
          weights: G x kmax router weights that scale the updates, or None.
          slots: the plan's used slots, or None when every slot is used.

        Returns:
          (B * H * W) x C.
        """
        G, kmax, C = attn.shape
        attn = attn.reshape(G * kmax, C)
        if slots is not None:
            attn = attn.index_select(0, slots)  # (G * kmax, C) -> (T, C)
        if weights is not None:
            weights = weights.reshape(G * kmax, 1)
            weights = weights if slots is None else weights.index_select(0, slots)  # (T, 1)
        h = x_rows.gather(0, gather_idx)  # (B * H * W, C) -> (T, C)
        update = self.attn.proj(attn)  # (T, C)
        h = h + (update if weights is None else weights * update)
        update = self.mlp(self.norm2(h))  # (T, C)
        h = h + (update if weights is None else weights * update)
        return x_rows.scatter(0, gather_idx, h)  # (T, C) -> (B * H * W, C)

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
          keep_ratio: share of each group's tokens that take the big path.
          return_routing: also return what :class:`LayerRouting` needs.
          padding: B x H x W bool, tokens of padding (routed last), or None.
          pool_kv: average the unrouted tokens' keys/values 2 x 2 (see
            :meth:`~biglittle_sam.modeling.attention.Attention.attend_pooled`); H, W and the
            window size must be even (the encoder checks this once, when it is switched on).

        Returns:
          x: B x H x W x C.
          routing: (scores B x H x W, selected B x H x W bool, capacity per group, routed tokens
            per image) or None.
        """
        x = x + self.little(x)
        xn = self.norm1(x)  # (B, H, W, C)
        B, H, W, C = x.shape
        group = H * W if self.window_size == 0 else self.window_size**2
        if capacity(keep_ratio, group) >= group:
            out = self.forward_dense(x, xn)
            if not return_routing:
                return out, None
            scores = self._scores(x, xn, padding)  # (B, H, W)
            return out, (scores, torch.ones_like(scores, dtype=torch.bool), group, H * W)

        plan = self._plan(B, (H, W), keep_ratio, x.device)
        scores = self._scores(x, xn, padding)  # (B, H, W)
        indices, weights, pos = self._route(scores, plan)  # (G, kmax), (G, kmax), (T,)
        T = pos.shape[0]
        x_rows = x.reshape(B * H * W, C)  # (B * H * W, C), no window layout: no copies
        gather_idx = pos.unsqueeze(-1).expand(T, C)  # (T, C)
        xn_sel = xn.reshape(B * H * W, C).gather(0, gather_idx)  # (B * H * W, C) -> (T, C)
        mask = pool_kv or return_routing or self.context is not None
        selected = self._selected(pos, (B, H, W)) if mask else None
        attn = self._attend_routed(xn, xn_sel, plan, indices, selected if pool_kv else None)
        out = self._update_routed(x_rows, gather_idx, attn, weights, plan.slots).view(B, H, W, C)
        if self.context is not None and selected is not None:  # (B, H, W, C), skipped rows only
            out = self.context(x, xn, out, selected, indices)
        if selected is None:
            return out, None
        return out, (scores, selected, plan.kmax, T // B)

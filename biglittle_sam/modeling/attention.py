"""Attention with SAM's parameters, computed for all tokens or only for routed query tokens.

``Attention`` has exactly the parameters of ``segment_anything.modeling.image_encoder.Attention``
(``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``), so SAM's weights load into it unchanged. It adds
one thing: the queries may be a routed subset of the tokens while every token of the group stays a
key and a value (semi-cross attention). SAM's decomposed relative position bias is gathered for the
positions of those queries.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "window_partition", "window_unpartition", "resize_rel_pos"]


def window_partition(
    x: Tensor, window_size: int, pad_value: float = 0.0
) -> Tuple[Tensor, Tuple[int, int]]:
    """Split a grid into non-overlapping windows, padding the bottom and right edges.

    Arguments:
      x: B x H x W x C.
      window_size: window side w.
      pad_value: value of padded positions (SAM pads its normalized tokens with zeros).

    Returns:
      windows: (B * nW) x (w * w) x C, windows in row-major order per image.
      (Hp, Wp): the padded grid size.
    """
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h), value=pad_value)  # (B, Hp, Wp, C)
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    # (B, nH, w, nW, w, C) -> (B, nH, nW, w, w, C) -> (B * nH * nW, w * w, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: Tuple[int, int], hw: Tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`, dropping the padding.

    Arguments:
      windows: (B * nW) x (w * w) x C.
      window_size: window side w.
      pad_hw: padded grid size (Hp, Wp).
      hw: original grid size (H, W).

    Returns:
      B x H x W x C.
    """
    Hp, Wp = pad_hw
    H, W = hw
    nh, nw = Hp // window_size, Wp // window_size
    B = windows.shape[0] // (nh * nw)
    C = windows.shape[-1]
    x = windows.view(B, nh, nw, window_size, window_size, C)  # (B, nH, nW, w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)  # (B, nH, w, nW, w, C) -> (B, Hp, Wp, C)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()  # (B, H, W, C)
    return x


def resize_rel_pos(rel_pos: Tensor, length: int) -> Tensor:
    """Resize a relative-position table to ``length`` rows, as ``segment_anything``'s
    ``get_rel_pos``.

    Arguments:
      rel_pos: L x head_dim.
      length: 2 * size - 1 for a grid side ``size``.

    Returns:
      length x head_dim.
    """
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(
        rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),  # (1, head_dim, L)
        size=length,
        mode="linear",
    )
    return resized.reshape(-1, length).permute(1, 0)  # (length, head_dim)


class Attention(nn.Module):
    """Multi-head attention with SAM's parameter names and optional decomposed relative positions.

    The same module serves SAM-style self-attention over a group of tokens (a window or the whole
    grid) and semi-cross attention, where only routed tokens are queries. ``fused`` selects
    ``scaled_dot_product_attention``; the explicit path is kept as the reference.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: Optional[Tuple[int, int]] = None,
        fused: bool = True,
    ) -> None:
        """
        Arguments:
          dim: token width C.
          num_heads: number of heads.
          qkv_bias: whether the qkv projection has a bias.
          use_rel_pos: add SAM's decomposed relative position bias.
          input_size: grid side (window or image) the relative tables are made for.
          fused: use ``F.scaled_dot_product_attention``.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def project_q(self, x: Tensor) -> Tensor:
        """Queries. x: ... x C -> ... x C (heads not yet split)."""
        dim = x.shape[-1]
        bias = self.qkv.bias[:dim] if self.qkv.bias is not None else None
        return F.linear(x, self.qkv.weight[:dim], bias)

    def project_kv(self, x: Tensor, bias: bool = True) -> Tensor:
        """Keys and values, concatenated. x: ... x C -> ... x 2C (keys first, as in SAM's qkv)."""
        dim = x.shape[-1]
        b = self.qkv.bias[dim:] if (bias and self.qkv.bias is not None) else None
        return F.linear(x, self.qkv.weight[dim:], b)

    def kv_bias(self, dim: int) -> Optional[Tensor]:
        """The key/value bias (2C), or None: what SAM's zero-padded tokens project to."""
        return self.qkv.bias[dim:] if self.qkv.bias is not None else None

    def heads(self, x: Tensor) -> Tensor:
        """G x L x C -> G x heads x L x head_dim."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def rel_pos_parts(
        self, q: Tensor, q_pos: Optional[Tensor], grid: Tuple[int, int]
    ) -> Tuple[Tensor, Tensor]:
        """The row and column terms of SAM's decomposed relative position bias.

        Arguments:
          q: G x heads x L x head_dim, unscaled queries (SAM uses them unscaled here).
          q_pos: G x L flat positions (row * gw + col) of the queries in the group's grid, or None
            when the queries are every token of the grid in order.
          grid: (gh, gw), the group's grid.

        Returns:
          rel_h: G x heads x L x gh, the term for each key row.
          rel_w: G x heads x L x gw, the term for each key column.
        """
        G, nh, L, _ = q.shape
        gh, gw = grid
        table_h = resize_rel_pos(self.rel_pos_h, 2 * gh - 1)  # (2gh-1, hd)
        table_w = resize_rel_pos(self.rel_pos_w, 2 * gw - 1)  # (2gw-1, hd)
        if q_pos is None:
            pos = torch.arange(gh * gw, device=q.device).expand(G, -1)  # (G, L)
        else:
            pos = q_pos
        qh = pos // gw  # (G, L)
        qw = pos % gw  # (G, L)
        # Relative index of key row kh for a query in row qh: qh - kh + (gh - 1), as in get_rel_pos.
        kh = torch.arange(gh, device=q.device)
        kw = torch.arange(gw, device=q.device)
        idx_h = (qh.unsqueeze(-1) - kh + (gh - 1)).unsqueeze(1).expand(G, nh, L, gh)  # (G,nh,L,gh)
        idx_w = (qw.unsqueeze(-1) - kw + (gw - 1)).unsqueeze(1).expand(G, nh, L, gw)  # (G,nh,L,gw)
        rel_h = (q @ table_h.t()).gather(-1, idx_h)  # (G, nh, L, 2gh-1) -> (G, nh, L, gh)
        rel_w = (q @ table_w.t()).gather(-1, idx_w)  # (G, nh, L, 2gw-1) -> (G, nh, L, gw)
        return rel_h, rel_w

    def rel_pos_bias(self, q: Tensor, q_pos: Optional[Tensor], grid: Tuple[int, int]) -> Tensor:
        """SAM's decomposed relative position bias for the given query positions.

        Arguments:
          q, q_pos, grid: as :meth:`rel_pos_parts`; keys are all gh * gw positions.

        Returns:
          G x heads x L x (gh * gw).
        """
        rel_h, rel_w = self.rel_pos_parts(q, q_pos, grid)
        G, nh, L, gh = rel_h.shape
        bias = rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)  # (G, nh, L, gh, gw)
        return bias.view(G, nh, L, gh * grid[1])

    def core(self, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor]) -> Tensor:
        """softmax(q k^T * scale + bias) v, fused or explicit.

        Arguments:
          q: G x heads x L x hd; k, v: G x heads x M x hd; bias: G x heads x L x M or None.

        Returns:
          G x L x C, before the output projection.
        """
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (G, nh, L, M)
            if bias is not None:
                attn = attn + bias
            out = attn.softmax(dim=-1) @ v  # (G, nh, L, hd)
        G, nh, L, hd = out.shape
        return out.transpose(1, 2).reshape(G, L, nh * hd)  # (G, nh, L, hd) -> (G, L, C)

    def attend_heads(
        self, q: Tensor, kv: Tensor, q_pos: Optional[Tensor], grid: Tuple[int, int]
    ) -> Tensor:
        """Projected queries attend to every token of their group (no output projection).

        Arguments:
          q: G x L x C projected queries (:meth:`project_q` without the head split).
          kv: G x M x 2C keys and values of every token of the group.
          q_pos: G x L flat grid positions of the queries, or None for all positions in order.
          grid: (gh, gw) with gh * gw = M.

        Returns:
          G x L x C.
        """
        G, M = kv.shape[:2]
        qh = self.heads(q)  # (G, nh, L, hd)
        k, v = kv.view(G, M, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (G,nh,M,hd)
        bias = self.rel_pos_bias(qh, q_pos, grid) if self.use_rel_pos else None  # (G, nh, L, M)
        return self.core(qh, k, v, bias)

    def attend_pooled(
        self,
        q: Tensor,
        kv_sel: Tensor,
        key_valid: Optional[Tensor],
        kv_pool: Tensor,
        log_count: Tensor,
        q_pos: Tensor,
        grid: Tuple[int, int],
    ) -> Tensor:
        """Semi-cross attention with routed keys at full resolution and the rest pooled 2 x 2.

        The keys are the routed tokens themselves (the queries) plus one averaged key/value per
        2 x 2 block of unrouted tokens. A block's logit gets ``log(count)``, so it carries the
        softmax weight of its ``count`` unrouted tokens as if they were equal; its relative
        position bias is the mean over the block's four positions. Blocks with no unrouted token
        (count 0) are masked out. Every routed token is a query and a full-resolution key, so with
        everything routed this is plain self-attention (the layer then takes the dense path).

        Arguments:
          q: G x L x C projected queries at positions ``q_pos``.
          kv_sel: G x L x 2C keys/values of the same tokens.
          key_valid: G x L bool, False for query slots that hold no routed token (their key is
            masked out), or None when every slot is real.
          kv_pool: G x P x 2C pooled keys/values, P = (gh / 2) * (gw / 2) blocks in row-major order.
          log_count: G x P, log of the unrouted tokens in each block (-inf for none).
          q_pos: G x L flat grid positions of the queries (and of the routed keys).
          grid: (gh, gw), both even.

        Returns:
          G x L x C, before the output projection.
        """
        G, L, C = q.shape
        P = kv_pool.shape[1]
        qh = self.heads(q)  # (G, nh, L, hd)
        kv = torch.cat([kv_sel, kv_pool], dim=1)  # (G, L + P, 2C)
        k, v = kv.view(G, L + P, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        mask_sel = torch.zeros_like(q[..., 0])  # (G, L): -inf at unused slots' keys
        if key_valid is not None:
            mask_sel = mask_sel.masked_fill(~key_valid, float("-inf"))
        if self.use_rel_pos:
            nh = self.num_heads
            gw = grid[1]
            rel_h, rel_w = self.rel_pos_parts(qh, q_pos, grid)  # (G,nh,L,gh), (G,nh,L,gw)
            key_h = (q_pos // gw).view(G, 1, 1, L).expand(G, nh, L, L)  # rows of the routed keys
            key_w = (q_pos % gw).view(G, 1, 1, L).expand(G, nh, L, L)  # columns of routed keys
            pool_h = 0.5 * (rel_h[..., 0::2] + rel_h[..., 1::2])  # (G, nh, L, gh / 2)
            pool_w = 0.5 * (rel_w[..., 0::2] + rel_w[..., 1::2])  # (G, nh, L, gw / 2)
            bias_sel = rel_h.gather(-1, key_h) + rel_w.gather(-1, key_w)  # (G, nh, L, L)
            if key_valid is not None:  # only edge windows have unused slots to mask
                bias_sel = bias_sel + mask_sel[:, None, None, :]
            bias_pool = (pool_h.unsqueeze(-1) + pool_w.unsqueeze(-2)).view(G, nh, L, P)
            bias_pool = bias_pool + log_count[:, None, None, :]  # pooled keys weigh their count
            bias = torch.cat([bias_sel, bias_pool], dim=-1)  # (G, nh, L, L + P)
        else:
            bias = torch.cat([mask_sel, log_count], dim=-1)[:, None, None, :]  # (G, 1, 1, L + P)
            bias = bias.expand(G, self.num_heads, L, L + P)
        return self.core(qh, k, v, bias.to(q.dtype))

    def attend(
        self,
        q_tokens: Tensor,
        kv: Tensor,
        q_pos: Optional[Tensor],
        grid: Tuple[int, int],
    ) -> Tensor:
        """Semi-cross attention: ``q_tokens`` attend to every token of their group.

        Arguments:
          q_tokens: G x L x C normalized query tokens (L = all M tokens when ``q_pos`` is None).
          kv: G x M x 2C keys and values of every token of the group (from :meth:`project_kv`).
          q_pos: G x L flat grid positions of the queries, or None for all positions in order.
          grid: (gh, gw) with gh * gw = M.

        Returns:
          G x L x C, after the output projection.
        """
        return self.proj(self.attend_heads(self.project_q(q_tokens), kv, q_pos, grid))

    def forward(self, x: Tensor, grid: Tuple[int, int]) -> Tensor:
        """Self-attention over each group. x: G x M x C (M = gh * gw) -> G x M x C."""
        return self.attend(x, self.project_kv(x), None, grid)

"""Global context for the tokens the router skips in a global layer (``global_context``).

In a global layer SAM's block lets every token see the whole image. In a big.LITTLE layer only the
routed tokens get that view (the P-block's semi-cross attention); the E-block is windowed in every
layer, so a skipped token sees its own window only. A context module gives the skipped tokens of a
global layer a cheap view of the whole image, after the big block has run:

    out = BigLittleLayer(x)                                   # as before
    out[skipped] += PooledContext(norm1(x))[skipped]          # "pooled"
                 |  gate * (out - x)[nearest routed token]    # "nearest"

- ``"pooled"`` (:class:`PooledContext`): every skipped token attends, at the E-block's width d, to
  the ``norm1`` features of the grid averaged to P x P blocks (P = ``global_context_pool``).
  ``N C d`` (queries) + ``2 P^2 C d`` (keys, values) + ``2 N P^2 d`` (attention) + ``N d C``
  (output) MACs per global layer.
- ``"nearest"`` (:class:`NearestContext`): every skipped token adds, scaled by a per-channel gate,
  the big block's update of its most similar routed token (cosine of ``norm1`` features; the
  training-free copy rule, :func:`nearest_copy`, matched over the whole image). That update was
  computed with the whole image as keys and values. ``N k C`` MACs for the cosines (k routed).

The routed tokens and every token of a layer that routes all of them (keep ratio 1) are unchanged,
so r = 1 is exactly the layer without the module. Init rule: the output projection ("pooled") and
the gate ("nearest") start at zero, so a fresh module, and an old checkpoint loaded into a model
with the module on (its missing ``.context.`` keys keep that init), computes what it did before.
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BigLittleConfig

__all__ = [
    "PooledContext",
    "NearestContext",
    "nearest_copy",
    "attach_global_context",
    "CONTEXT_KEYS",
    "old_layout_missing",
]

# Substring of the state-dict keys of the context modules (``blocks.<i>.context.*``).
CONTEXT_KEYS = (".context.",)


def nearest_copy(
    feats: Tensor, indices: Tensor, delta: Tensor, valid: Optional[Tensor] = None
) -> Tensor:
    """Each token's copy of the update of its group's most similar chosen token.

    Arguments:
      feats: G x M x C features to match by cosine (``norm1`` features; zero rows never win).
      indices: G x k positions (of M) of the chosen tokens.
      delta: G x k x C updates of the chosen tokens, in ``indices`` order.
      valid: G x k bool, False at slots that hold no chosen token (never a match), or None.

    Returns:
      G x M x C (a chosen token gets its own update: it is its own best match).
    """
    G, M, C = feats.shape
    k = indices.shape[1]
    unit = F.normalize(feats, dim=-1)  # (G, M, C)
    unit_sel = unit.gather(1, indices.unsqueeze(-1).expand(G, k, C))  # (G, M, C) -> (G, k, C)
    sim = unit @ unit_sel.transpose(1, 2)  # (G, M, k) cosines
    if valid is not None:
        sim = sim.masked_fill(~valid.unsqueeze(1), float("-inf"))
    match = sim.argmax(dim=-1)  # (G, M)
    return delta.gather(1, match.unsqueeze(-1).expand(G, M, C))  # (G, k, C) -> (G, M, C)


class PooledContext(nn.Module):
    """Skipped tokens attend to the whole grid averaged to P x P blocks, at width d."""

    def __init__(self, dim: int, little_dim: int, num_heads: int, pool: int) -> None:
        """
        Arguments:
          dim: residual width C; little_dim: attention width d; num_heads: heads (d / heads each).
          pool: P, the pooled grid's side (it must divide the token grid).
        """
        super().__init__()
        self.pool = pool
        self.num_heads = num_heads
        self.scale = (little_dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, little_dim)
        self.kv = nn.Linear(dim, 2 * little_dim)
        self.proj = nn.Linear(little_dim, dim)
        nn.init.zeros_(self.proj.weight)  # the init rule: a fresh module changes nothing
        nn.init.zeros_(self.proj.bias)

    def update(self, xn: Tensor) -> Tensor:
        """The context update of every token. xn: B x H x W x C (``norm1``) -> B x H x W x C."""
        B, H, W, C = xn.shape
        P, nh = self.pool, self.num_heads
        pooled = xn.reshape(B, P, H // P, P, W // P, C).mean(dim=(2, 4))  # (B, P, P, C)
        q = self.q(xn).reshape(B, H * W, nh, -1).transpose(1, 2)  # (B, nh, N, hd)
        kv = self.kv(pooled).reshape(B, P * P, 2, nh, -1)  # (B, P^2, 2, nh, hd)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, P^2, hd) each
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, nh, N, P^2)
        out = (attn @ v).transpose(1, 2).reshape(B, H, W, -1)  # (B, nh, N, hd) -> (B, H, W, d)
        return self.proj(out)

    def forward(
        self, x: Tensor, xn: Tensor, out: Tensor, selected: Tensor, indices: Tensor
    ) -> Tensor:
        """The layer's output with the skipped tokens' context added.

        Arguments:
          x: B x H x W x C layer input after the E-block; xn: its ``norm1``.
          out: B x H x W x C the layer's output (routed tokens updated by the big block).
          selected: B x H x W bool, the routed tokens.
          indices: B x k flat positions of the routed tokens (unused here).

        Returns:
          B x H x W x C.
        """
        return torch.where(selected.unsqueeze(-1), out, out + self.update(xn))


class NearestContext(nn.Module):
    """Skipped tokens add the gated big-block update of their most similar routed token."""

    def __init__(self, dim: int) -> None:
        """
        Arguments:
          dim: residual width C (one gate per channel, zero at the start: the init rule).
        """
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(
        self, x: Tensor, xn: Tensor, out: Tensor, selected: Tensor, indices: Tensor
    ) -> Tensor:
        """As :meth:`PooledContext.forward`; ``indices`` (B x k) are the routed tokens' flat
        positions, in the order the big block updated them."""
        B, H, W, C = x.shape
        k = indices.shape[1]
        gather_idx = indices.unsqueeze(-1).expand(B, k, C)  # (B, k, C)
        delta = (out - x).reshape(B, H * W, C).gather(1, gather_idx)  # (B, N, C) -> (B, k, C)
        copied = nearest_copy(xn.reshape(B, H * W, C), indices, delta)  # (B, N, C)
        update = self.gate * copied.view(B, H, W, C)  # (B, H, W, C)
        return torch.where(selected.unsqueeze(-1), out, out + update)


def attach_global_context(blocks: nn.ModuleList, config: BigLittleConfig) -> None:
    """Give each global-attention block of ``blocks`` the context module ``config`` names
    (its ``context`` attribute; state-dict keys ``blocks.<i>.context.*``); none for "none"."""
    if config.global_context == "none":
        return
    for blk in blocks:
        if blk.window_size != 0:
            continue
        if config.global_context == "pooled":
            blk.context = PooledContext(
                config.embed_dim, config.little_dim, config.little_heads, config.global_context_pool
            )
        else:
            blk.context = NearestContext(config.embed_dim)


def old_layout_missing(config: object, state: Mapping[str, Tensor]) -> Tuple[str, ...]:
    """Key substrings a state dict may lack for a model of ``config``: the context modules' when
    ``config`` turns them on and ``state`` has none (a checkpoint of the old layout, whose missing
    keys keep the init rule's zeros, so its outputs are unchanged); else ()."""
    if getattr(config, "global_context", "none") == "none":
        return ()
    if any(s in key for key in state for s in CONTEXT_KEYS):
        return ()
    return CONTEXT_KEYS

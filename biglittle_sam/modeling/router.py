"""The router: one logit per token, a static top-k per group, and a gradient through the top-k."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["PADDING_MARGIN", "Router", "penalize_padding", "select_tokens"]

# How far below the lowest real router logit a padding token's logit goes (see penalize_padding):
# its softmax weight next to any real token is at most e^-30.
PADDING_MARGIN = 30.0


class Router(nn.Module):
    """Scores every token with a linear map of the (already normalized) token.

    The router reads the P-block's ``norm1`` output, which the P-block needs for its keys anyway, so
    it adds only N x C multiply-adds per layer.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.normal_(self.score.weight, std=0.02)
        nn.init.zeros_(self.score.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: ... x C normalized tokens -> ... logits."""
        return self.score(x).squeeze(-1)


def select_tokens(logits: Tensor, k: int, sorted: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """The ``k`` highest-scoring tokens of each group and their straight-through weights.

    Arguments:
      logits: G x M router logits; positions that must never be chosen (padding) hold -inf, so they
        fill a slot only when a group has fewer than ``k`` real tokens, and then only a slot whose
        result the caller discards.
      k: tokens per group, static (``capacity(keep_ratio, M)``).
      sorted: return each group's tokens best first (needed when a caller keeps only a prefix).

    Returns:
      indices: G x k positions within each group.
      weights: G x k x 1 when gradients flow to the router, else None (the caller skips the
        multiply). They are ``p / p.detach()`` with ``p`` the softmax over the group: exactly 1 in
        the forward pass
        (0 at a padded slot), and in the backward pass they give the router a gradient through the
        hard top-k (d weight / d logit_j = delta_ij - p_j).
    """
    indices = logits.topk(k, dim=1, sorted=sorted).indices  # (G, k)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return indices, None
    # exp(log p - log p.detach()) is exactly 1 forward, whatever the logits' spread (p itself can
    # underflow to 0 for a selected token), and its gradient is that of log p.
    logp = logits.log_softmax(dim=1).gather(1, indices)  # (G, M) -> (G, k)
    real = torch.isfinite(logp)  # False only at padded slots
    logp = torch.where(real, logp, torch.zeros_like(logp))
    weights = torch.exp(logp - logp.detach()) * real
    return indices, weights.unsqueeze(-1)  # (G, k, 1)


def penalize_padding(scores: Tensor, padding: Tensor) -> Tensor:
    """Router logits with every padding token below every real one, in their own order.

    A padding token's logit drops by the span of its row's logits plus :data:`PADDING_MARGIN`
    (the span taken without gradient), so the drop stays about as large as the logits themselves.
    A fixed large drop (the earlier 1e4) rounds nearby logits to the same float (fp32's spacing at
    1e4 is 1e-3), and the tied padding tokens that fill a window with too few real ones were then
    chosen differently by PyTorch and onnxruntime.

    Arguments:
      scores: N x ... router logits, one row per image (B x H x W) or per window (G x M).
      padding: bool, the shape of ``scores``; True at padding tokens.

    Returns:
      The logits, the shape of ``scores``.
    """
    dims = tuple(range(1, scores.dim()))
    span = scores.amax(dim=dims, keepdim=True) - scores.amin(dim=dims, keepdim=True)  # (N, 1...)
    return scores - padding.to(scores.dtype) * (span.detach() + PADDING_MARGIN)

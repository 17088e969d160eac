"""The router: one logit per token, a static top-k per group, and a gradient through the top-k."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["Router", "select_tokens"]


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

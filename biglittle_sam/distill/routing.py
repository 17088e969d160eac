"""Exploration for the routers while they learn: Gumbel noise on the router logits.

A router behind a hard top-k only ever gets a gradient for the tokens it already picks (through
the straight-through weights ``p / p.detach()``); a token it never picks can never show that it
would have helped. Adding Gumbel noise to the logits turns the top-k into a sample of k tokens
without replacement from ``softmax(logits)`` (the Gumbel-top-k trick), so every token is tried now
and then and the router learns from the result. The noise scale decays linearly to 0 over the
first ``anneal`` share of the steps, so the end of training sees the deterministic top-k that
inference uses. Nothing changes outside training (``module.training`` is False) and for random
routing (the router is not called).

The noise of image b comes from a generator seeded by the image's own seed and the layer, so it
is the same however a batch is split over processes, and a resumed run draws the same noise.
"""

from __future__ import annotations

from functools import partial
from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["RouterExploration"]


class RouterExploration:
    """Forward hooks on every router of a big.LITTLE encoder that add annealed Gumbel noise."""

    def __init__(self, encoder: nn.Module, scale: float, anneal_steps: int) -> None:
        """
        Arguments:
          encoder: an ``ImageEncoderBigLittle``.
          scale: the noise scale at step 0 (1: a sample from softmax(logits)).
          anneal_steps: the step at which the scale reaches 0.
        """
        if scale < 0:
            raise ValueError(f"router noise scale must be >= 0, got {scale}")
        self.scale = float(scale)
        self.anneal_steps = max(1, int(anneal_steps))
        self.current = self.scale
        self.seeds: Optional[List[int]] = None
        self.handles = [
            blk.router.register_forward_hook(partial(self._hook, layer=i))
            for i, blk in enumerate(encoder.blocks)
        ]

    def set_step(self, step: int) -> float:
        """Set the scale for ``step``; returns it (for the metrics)."""
        self.current = self.scale * max(0.0, 1.0 - step / self.anneal_steps)
        return self.current

    def set_images(self, seeds: Optional[Sequence[int]]) -> None:
        """The seeds of the images in the next forward pass (None: no noise)."""
        self.seeds = None if seeds is None else [int(s) for s in seeds]

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor, layer: int) -> Optional[Tensor]:
        """output: B x H x W router logits -> the same plus ``current`` x Gumbel noise."""
        if not module.training or self.current <= 0 or self.seeds is None:
            return None
        if len(self.seeds) != output.shape[0]:
            raise RuntimeError(
                f"router exploration got {len(self.seeds)} image seeds for a batch of "
                f"{output.shape[0]}"
            )
        noise = []
        for seed in self.seeds:
            gen = torch.Generator().manual_seed((seed * 1009 + layer) % (2**63 - 1))
            u = torch.rand(output.shape[1:], generator=gen).clamp(1e-9, 1.0 - 1e-7)  # (H, W)
            noise.append(-torch.log(-torch.log(u)))
        gumbel = torch.stack(noise).to(device=output.device, dtype=output.dtype)  # (B, H, W)
        return output + self.current * gumbel

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

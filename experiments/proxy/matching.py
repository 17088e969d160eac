"""Dense students of the same encoder cost as a big.LITTLE student (proxy benchmark v2).

A user who wants SAM at a quarter of its encoder cost can also pick a small dense encoder
(MobileSAM's recipe: distil a narrower or shallower ViT's embeddings). :func:`matched_vit` finds
the plain SAM-shaped ViT whose encoder MACs (``flops.encoder_macs``) are closest to a target, the
big.LITTLE student's at one keep ratio, by shrinking the teacher's width (the same heads, each
narrower) or its depth (global layers one in three, as SAM's; the widest such student that
matches), and refuses a match further than the tolerance, before anything is trained.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, Tuple

from biglittle_sam.config import SamViTConfig
from biglittle_sam.flops import encoder_macs

__all__ = ["SHRINKS", "matched_vit", "one_in_three_globals"]

# How a dense student is made smaller than its teacher.
SHRINKS = ("width", "depth")


def one_in_three_globals(depth: int) -> Tuple[int, ...]:
    """Global layers one in three ending with the last, SAM's pattern (ViT-B: 2, 5, 8, 11 of
    12; depth 5: 1, 4)."""
    return tuple(range(depth - 1, -1, -3))[::-1]


def _narrower(base: SamViTConfig, depth: int) -> Iterator[SamViTConfig]:
    """``base`` at ``depth`` layers, at every width that keeps its head count (narrower heads)."""
    globals_ = base.global_attn_indexes if depth == base.depth else one_in_three_globals(depth)
    for width in range(base.num_heads, base.embed_dim + 1, base.num_heads):
        yield dataclasses.replace(
            base,
            name=f"{base.name}_d{depth}_w{width}",
            depth=depth,
            embed_dim=width,
            global_attn_indexes=globals_,
        )


def _candidates(base: SamViTConfig, shrink: str) -> Iterator[SamViTConfig]:
    """The dense configs ``shrink`` may pick: "width": every width at the teacher's depth;
    "depth": every depth below the teacher's, each at every width (the widest match wins)."""
    depths = [base.depth] if shrink == "width" else range(1, base.depth)
    for depth in depths:
        yield from _narrower(base, depth)


def matched_vit(
    target_macs: int, base: SamViTConfig, shrink: str = "width", tolerance: float = 0.05
) -> SamViTConfig:
    """The dense ViT shaped like ``base`` whose encoder MACs are closest to ``target_macs``.

    Arguments:
      target_macs: one image's encoder MACs to match (a big.LITTLE student's at its keep ratio).
      base: the teacher's config (a plain SAM config); the student keeps its image size, patch,
        windows, neck and decoder.
      shrink: "width" (the teacher's depth and heads, narrower) or "depth" (fewer layers, one in
        three global, as wide as the match allows).
      tolerance: the largest relative MAC difference accepted.

    Raises:
      ValueError: an unknown ``shrink``, a non-positive target, or no candidate within
        ``tolerance`` (naming the closest and its MACs).
    """
    if shrink not in SHRINKS:
        raise ValueError(f"shrink must be one of {SHRINKS}, got {shrink!r}")
    if target_macs <= 0:
        raise ValueError(f"target_macs must be positive, got {target_macs}")
    scored: List[Tuple[float, SamViTConfig, int]] = []
    for config in _candidates(base, shrink):
        macs = encoder_macs(config)["total"]
        scored.append((abs(macs - target_macs) / target_macs, config, macs))
    within = [t for t in scored if t[0] <= tolerance]
    if within and shrink == "depth":  # as shallow as needed, as wide as possible
        return max(within, key=lambda t: (t[1].depth, t[1].embed_dim, -t[0]))[1]
    gap, best, macs = min(scored, key=lambda t: t[0])
    if gap > tolerance:
        raise ValueError(
            f"no {shrink}-shrunk {base.name} matches {target_macs / 1e9:.4f} GMACs within "
            f"{tolerance:.0%}: the closest, {best.name}, costs {macs / 1e9:.4f} GMACs "
            f"({gap:.1%} off); try the other shrink or a wider teacher"
        )
    return best

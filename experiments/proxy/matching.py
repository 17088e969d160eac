"""Dense students of the same encoder cost as a big.LITTLE student (proxy benchmark v2).

A user who wants SAM at a quarter of its encoder cost can also pick a small dense encoder
(MobileSAM's recipe: distil a narrower or shallower ViT's embeddings). :func:`matched_vit` finds
the plain SAM-shaped ViT whose encoder MACs (``flops.encoder_macs``) are closest to a target, the
big.LITTLE student's at one keep ratio, by shrinking the teacher's width (the same heads, each
narrower) or its depth (global layers one in three, as SAM's; the widest such student that
matches), and refuses a match further than the tolerance, before anything is trained.

:func:`matched_timm` does the same for a timm TinyViT or RepViT student
(``biglittle_sam.distill.students``), whose MACs FlopCounterMode counts on one image.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Dict, Iterator, List, Tuple

import torch

from biglittle_sam.config import SamViTConfig
from biglittle_sam.distill.students import (
    TIMM_FAMILIES,
    TimmImageEncoder,
    TimmStudentSpec,
    counted_macs,
)
from biglittle_sam.flops import encoder_macs

__all__ = [
    "DEPTH_FACTORS",
    "SHRINKS",
    "depth_ladder",
    "matched_timm",
    "matched_vit",
    "one_in_three_globals",
    "timm_macs",
]

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


# The depth shrinks a timm student may take: each stage's blocks times the factor, at least 1.
DEPTH_FACTORS = (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)
MIN_WIDTH = 8  # the narrowest width unit (TinyViT: 8-wide heads; RepViT: an 8-channel stem)


def depth_ladder(base: Tuple[int, ...]) -> List[Tuple[float, Tuple[int, ...]]]:
    """(depth factor, blocks per stage) of every depth pattern a timm student may take.

    The shallow stages take ``base`` times each of DEPTH_FACTORS (at least 1 block); the deepest
    stage (TinyViT's third, 6 blocks; RepViT's third, 14) takes any count from 1 to its own, so
    that the MACs step finely enough for a 5% match at small widths. The factor is the pattern's
    blocks over ``base``'s: TinyViT's (2, 2, 6, 2) gives (1, 1, k, 1) and (2, 2, k, 2) for k = 1
    to 6, and (2, 2, 6, 2) has factor 1.
    """
    deep = max(range(len(base)), key=lambda i: base[i])
    ladder: List[Tuple[float, Tuple[int, ...]]] = []
    for f in DEPTH_FACTORS:
        for k in range(1, base[deep] + 1):
            depths = tuple(k if i == deep else max(1, round(d * f)) for i, d in enumerate(base))
            if all(depths != d for _, d in ladder):
                ladder.append((sum(depths) / sum(base), depths))
    return ladder


@lru_cache(maxsize=None)
def timm_macs(spec: TimmStudentSpec) -> int:
    """FlopCounterMode's MACs of one image through the student encoder ``spec`` describes."""
    with torch.random.fork_rng(devices=[]):
        encoder = TimmImageEncoder(spec)
    return counted_macs(encoder, spec.img_size)


class _CostModel:
    """Predicted MACs of a family's students at one geometry, from 15 counted ones.

    A block's MACs depend on its stage's width only, so the encoder's MACs are linear in each
    stage's block count: M(u, d) = M(u, 1111) + sum_i (d_i - 1) (M(u, 1111 + e_i) - M(u, 1111)).
    Each of those five terms is a quadratic in the width unit u (convolutions and projections grow
    as u squared, attention and depthwise convolutions as u; only RepViT's rounded squeeze-excite
    widths are off it, a little), fitted through counts at u = 8, 16 and 24.
    """

    def __init__(self, family: str, geometry: Dict[str, int]) -> None:
        self.xs = [float(MIN_WIDTH * k) for k in (1, 2, 3)]
        patterns = [(1, 1, 1, 1)] + [tuple(1 + (i == j) for j in range(4)) for i in range(4)]
        self.ys = [
            [float(timm_macs(TimmStudentSpec(family, int(u), p, **geometry))) for u in self.xs]
            for p in patterns
        ]

    def __call__(self, width: int, depths: Tuple[int, ...]) -> float:
        at = [_quadratic(self.xs, ys, float(width)) for ys in self.ys]  # (5,)
        return at[0] + sum((d - 1) * (at[1 + i] - at[0]) for i, d in enumerate(depths))


def _quadratic(xs: List[float], ys: List[float], u: float) -> float:
    """The quadratic through the three points (xs, ys) at ``u`` (Lagrange's form)."""
    total = 0.0
    for i in range(3):
        term = ys[i]
        for j in range(3):
            if j != i:
                term *= (u - xs[j]) / (xs[i] - xs[j])
        total += term
    return total


def matched_timm(
    target_macs: int, base: SamViTConfig, family: str = "tiny_vit", tolerance: float = 0.05
) -> TimmStudentSpec:
    """The sized-down timm student at ``base``'s geometry whose MACs match ``target_macs``.

    Candidates are every depth pattern of :func:`depth_ladder` at every width unit from
    MIN_WIDTH to twice the registered model's. Among those within ``tolerance`` (predicted by
    :class:`_CostModel`, then confirmed by an exact count), the one shrunk most evenly wins: width
    and depth divided by the most similar factors (compound scaling, as EfficientNet sizes its
    variants).

    Arguments:
      target_macs: one image's encoder MACs to match (a big.LITTLE student's at its keep ratio).
      base: the teacher's config: the student takes its image size, patch (the grid it aligns
        its strides to) and embedding channels.
      family: a key of ``TIMM_FAMILIES`` ("tiny_vit", "repvit").
      tolerance: the largest relative MAC difference accepted.

    Raises:
      ValueError: an unknown family, a non-positive target, a geometry no timm stage aligns with,
        or no candidate within ``tolerance`` (naming the target, the closest candidate and its
        MACs, and the tolerance), before anything is trained.
    """
    if family not in TIMM_FAMILIES:
        raise ValueError(f"family must be one of {tuple(TIMM_FAMILIES)}, got {family!r}")
    if target_macs <= 0:
        raise ValueError(f"target_macs must be positive, got {target_macs}")
    fam = TIMM_FAMILIES[family]
    geometry = dict(img_size=base.img_size, patch_size=base.patch_size, out_chans=base.out_chans)
    TimmStudentSpec(family, MIN_WIDTH, fam.base_depths, **geometry)  # the geometry's own error
    predict = _CostModel(family, geometry)
    scored: List[Tuple[float, float, TimmStudentSpec]] = []  # (balance, predicted gap, spec)
    for factor, depths in depth_ladder(fam.base_depths):
        for u in range(MIN_WIDTH, 2 * fam.base_width + 1):
            gap = abs(predict(u, depths) - target_macs) / target_macs
            balance = abs(math.log(u / fam.base_width) - math.log(factor))
            scored.append((balance, gap, TimmStudentSpec(family, u, depths, **geometry)))
    within = sorted((t for t in scored if t[1] <= tolerance), key=lambda t: (t[0], t[1]))
    for _, _, spec in within[:8]:
        if abs(timm_macs(spec) - target_macs) <= tolerance * target_macs:
            return spec
    closest = min(scored, key=lambda t: t[1])[2]
    macs = timm_macs(closest)
    raise ValueError(
        f"no {family} student at {base.name}'s geometry matches the target "
        f"{target_macs / 1e9:.4f} GMACs within {tolerance:.0%}: the closest, {closest.name}, "
        f"costs {macs / 1e9:.4f} GMACs ({abs(macs / target_macs - 1):.1%} off); try another "
        "family or the ViT student"
    )

"""Analytic multiply-accumulate (MAC) counts for SAM ViT and big.LITTLE image encoders.

The counts follow the code, operation by operation (the cost model of docs/encoder.md, with the
padding and static capacities the encoder really computes), and are checked against fvcore in the
tests. They count matrix products, convolutions and LayerNorms (5 per element, as fvcore counts
them); activations, softmax, gathers and scatters are a few tenths of a percent and are left out,
as fvcore leaves them out.

For bl_b (C = 768, d = 192) at 1024 x 1024: about 463 GMACs for SAM ViT-B's trunk against roughly
300 at r = 0.5, 200 at r = 0.25 and 140 at r = 0.1 (see ``python -m biglittle_sam.flops``);
``--split`` prints where they go (:func:`mac_split`).
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence, Tuple, Union

from torch import nn

from .config import (
    BigLittleConfig,
    SamViTConfig,
    capacity,
    get_config,
    little_window,
    validate_keep_ratio,
    window_capacities,
)
from .modeling import ImageEncoderBigLittle, ImageEncoderViTFused, model_config
from .modeling.training_free import routed_layers

__all__ = [
    "encoder_macs",
    "encoder_gmacs",
    "format_table",
    "mac_split",
    "format_split_table",
    "SPLIT_PARTS",
]

ModelOrConfig = Union[nn.Module, SamViTConfig, str]


_LN = 5  # fvcore's cost of a LayerNorm per element


def _padded(n: int, w: int) -> int:
    return n + (w - n % w) % w


def _attention_macs(queries: int, keys: int, dim: int, rel_len: int) -> int:
    """q @ k^T, attn @ v and the decomposed relative-position products for ``queries`` queries."""
    return 2 * queries * keys * dim + queries * dim * rel_len


def _sam_block(cfg: SamViTConfig, windowed: bool) -> Dict[str, int]:
    C, g, w = cfg.embed_dim, cfg.grid_size, cfg.window_size
    N = g * g
    hidden = int(C * cfg.mlp_ratio)
    if windowed:
        Np = _padded(g, w) ** 2
        # SAM runs qkv, attention and proj on the zero-padded windows, the MLP after cropping.
        linear = 3 * Np * C * C + Np * C * C + 2 * N * C * hidden
        attn = _attention_macs(Np, w * w, C, 2 * w if cfg.use_rel_pos else 0)
    else:
        linear = 4 * N * C * C + 2 * N * C * hidden
        attn = _attention_macs(N, N, C, 2 * g if cfg.use_rel_pos else 0)
    return {"big_linear": linear, "big_attention": attn, "norm": 2 * _LN * N * C}


def _little_block(cfg: BigLittleConfig) -> int:
    C, d, g, w = cfg.embed_dim, cfg.little_dim, cfg.grid_size, little_window(cfg)
    N = g * g
    Np = _padded(g, w) ** 2
    hidden = int(d * cfg.little_mlp_ratio)
    down_up = 2 * N * C * d
    attn = 4 * Np * d * d + _attention_macs(Np, w * w, d, 2 * (2 * w - 1))
    mlp = 2 * N * d * hidden
    norms = _LN * (N * C + (Np + N) * d)  # input norm; norm1 runs on the padded windows
    return down_up + attn + mlp + norms


def _big_block(
    cfg: SamViTConfig,
    windowed: bool,
    keep_ratio: float,
    pool_kv: bool = False,
    global_routed: Optional[int] = None,
) -> Dict[str, int]:
    """One big block; ``global_routed``: a global layer's routed tokens when they are chosen per
    window (the training-free mode) rather than ``capacity(keep_ratio, N)`` over the image."""
    C, g, w = cfg.embed_dim, cfg.grid_size, cfg.window_size
    N = g * g
    hidden = int(C * cfg.mlp_ratio)
    group = w * w if windowed else N
    groups = (_padded(g, w) // w) ** 2 if windowed else 1
    rel = (2 * (2 * w - 1) if windowed else 2 * (2 * g - 1)) if cfg.use_rel_pos else 0
    k = capacity(keep_ratio, group) if windowed or global_routed is None else global_routed
    if k >= group:  # dense: SAM's block, queries for every (padded) position
        q_tokens = groups * group
        kv = 2 * N * C * C  # keys and values of every real token (padding is the bias)
        linear = kv + 2 * q_tokens * C * C + 2 * N * C * hidden
        attn = _attention_macs(q_tokens, group, C, rel)
        return {"big_linear": linear, "big_attention": attn, "router": 0, "norm": 2 * _LN * N * C}
    # Routed tokens: each window's share of its real tokens (edge windows route fewer); attention
    # runs on kmax slots per window, the projections and the MLP on the routed tokens only.
    routed = sum(window_capacities(keep_ratio, (g, g), w)) if windowed else k
    slots = groups * k
    if pool_kv:  # routed keys at full resolution, every 2 x 2 block of the grid pooled
        kv = 2 * routed * C * C + 2 * (N // 4) * C * C
        keys = k + group // 4
    else:
        kv = 2 * N * C * C
        keys = group
    # Keys/values of the tokens the big block does not update: the pooled grid, or every
    # unrouted token; the rest of ``kv`` projects the routed tokens.
    kv_unrouted = 2 * (N // 4) * C * C if pool_kv else 2 * (N - routed) * C * C
    linear = kv - kv_unrouted + 2 * routed * C * C + 2 * routed * C * hidden
    attn = _attention_macs(slots, keys, C, rel)
    norm = _LN * (N + routed) * C  # norm1 on every token, norm2 on the routed ones
    return {
        "big_linear": linear,
        "kv_unrouted": kv_unrouted,
        "big_attention": attn,
        "router": N * C,
        "norm": norm,
    }


def _context_block(cfg: BigLittleConfig, routed: int) -> int:
    """A global layer's context module (``global_context``, modeling/global_context.py) when the
    layer routes ``routed`` of its N tokens (r = 1 runs none). "pooled": queries N C d, keys and
    values of the P x P pooled grid 2 P^2 C d, attention 2 N P^2 d, output N d C (computed for
    every token, kept for the skipped ones); "nearest": the cosines of every token against the
    routed ones, N k C."""
    C, d, N = cfg.embed_dim, cfg.little_dim, cfg.grid_size**2
    if routed >= N or cfg.global_context == "none":
        return 0
    if cfg.global_context == "pooled":
        pooled = cfg.global_context_pool**2
        return 2 * N * C * d + 2 * pooled * C * d + 2 * N * pooled * d
    return N * routed * C  # "nearest"


# MACs per token and channel of the training-free scores (the squared distance from the window
# mean; the squared differences to the right and lower neighbours; none for random).
_SCORE_MACS = {"window_mean": 1, "edge": 2, "random": 0}


def _training_free_block(
    cfg: BigLittleConfig, layer: int, keep_ratio: float, pool_kv: bool
) -> Dict[str, int]:
    """One layer of the training-free mode (:mod:`~biglittle_sam.modeling.training_free`): SAM's
    block densely, or the score, the chosen tokens' rows (per window, in global layers too) and
    the skipped tokens' rule ("copy": one cosine per token and chosen token of its window)."""
    C, g, w = cfg.embed_dim, cfg.grid_size, cfg.window_size
    N, hidden = g * g, int(C * cfg.mlp_ratio)
    windowed = layer not in cfg.global_attn_indexes
    kmax = capacity(keep_ratio, w * w)
    if not routed_layers(cfg)[layer] or kmax >= w * w:
        return _big_block(cfg, windowed, 1.0)
    routed = sum(window_capacities(keep_ratio, (g, g), w))
    if cfg.skip_rule == "mlp_skip":  # dense attention, the MLP and norm2 on the chosen rows
        parts = _big_block(cfg, windowed, 1.0)
        parts["big_linear"] -= 2 * (N - routed) * C * hidden
        parts["norm"] -= _LN * (N - routed) * C
    else:
        parts = _big_block(cfg, windowed, keep_ratio, pool_kv, None if windowed else routed)
    parts["router"] = _SCORE_MACS[cfg.token_score] * N * C
    if cfg.skip_rule == "copy":
        parts["match"] = (_padded(g, w) // w) ** 2 * w * w * kmax * C
    if cfg.little_correction:  # the E-block and the gate (copy_little.py)
        parts["little"] = _little_block(cfg)
        parts["context"] = N * C
    return parts


def _resolve(model: ModelOrConfig) -> Tuple[SamViTConfig, bool, float, bool]:
    """The config; whether a plain SAM config runs on the fused dense path (fast SAM); and the
    keep ratio and key/value pooling to count by default.

    A built big.LITTLE encoder is asked for its run-time ratio and pooling (which may differ from
    the config it was built with); a config or registry name gives its own fields.
    """
    if isinstance(model, (SamViTConfig, str)):
        cfg = model if isinstance(model, SamViTConfig) else get_config(model)
        if isinstance(cfg, BigLittleConfig):
            return cfg, False, cfg.keep_ratio, cfg.pool_kv
        return cfg, False, 1.0, False
    encoder = getattr(model, "image_encoder", model)
    cfg = model_config(model)
    if isinstance(encoder, ImageEncoderBigLittle):
        return cfg, False, encoder.keep_ratio, encoder.pool_kv
    return cfg, isinstance(encoder, ImageEncoderViTFused), 1.0, False


def _encoder_parts(
    model: ModelOrConfig,
    keep_ratio: Optional[float],
    pool_kv: Optional[bool],
    layer_ratios: Optional[Sequence[float]] = None,
) -> Dict[str, int]:
    """:func:`encoder_macs` with the big blocks' key/value projections of unrouted tokens apart
    (``kv_unrouted``, not in ``big_linear``) and no total."""
    cfg, fused, current_ratio, current_pool_kv = _resolve(model)
    r = current_ratio if keep_ratio is None else validate_keep_ratio(keep_ratio)
    if layer_ratios is not None and len(layer_ratios) != cfg.depth:
        raise ValueError(
            f"layer_ratios: one keep ratio per layer ({cfg.depth}), got {len(layer_ratios)}"
        )
    if pool_kv is None:
        pool_kv = current_pool_kv
    C, g = cfg.embed_dim, cfg.grid_size
    N = g * g
    out: Dict[str, int] = {
        k: 0
        for k in (
            "patch_embed",
            "little",
            "router",
            "big_linear",
            "kv_unrouted",
            "big_attention",
            "match",
            "context",
            "norm",
        )
    }
    out["patch_embed"] = N * C * cfg.in_chans * cfg.patch_size**2
    for i in range(cfg.depth):
        windowed = i not in cfg.global_attn_indexes
        if isinstance(cfg, BigLittleConfig) and cfg.training_free:  # no routers; E-blocks only
            # with little_correction
            ratio = r if layer_ratios is None else validate_keep_ratio(layer_ratios[i])
            parts = _training_free_block(cfg, i, ratio, pool_kv)
        elif isinstance(cfg, BigLittleConfig):
            out["little"] += _little_block(cfg)
            ratio = r if layer_ratios is None else validate_keep_ratio(layer_ratios[i])
            parts = _big_block(cfg, windowed, ratio, pool_kv)
            if not windowed:
                out["context"] += _context_block(cfg, capacity(ratio, N))
        elif fused:  # BigBlock's dense path: keys and values of real tokens only
            parts = _big_block(cfg, windowed, 1.0)
        else:
            parts = _sam_block(cfg, windowed)
        for name, value in parts.items():
            out[name] += value
    out["neck"] = N * C * cfg.out_chans + N * cfg.out_chans * cfg.out_chans * 9
    return out


def encoder_macs(
    model: ModelOrConfig,
    keep_ratio: Optional[float] = None,
    pool_kv: Optional[bool] = None,
    layer_ratios: Optional[Sequence[float]] = None,
) -> Dict[str, int]:
    """MACs of one image through the image encoder, by part.

    Arguments:
      model: a config, a registry name, a ``Sam`` or an image encoder (SAM's own, big.LITTLE, or
        :class:`ImageEncoderViTFused`, which is counted as it computes).
      keep_ratio: for big.LITTLE encoders; None: a built encoder's current ratio (this thread's,
        inside ``keep_ratio_context``), or a config's own.
      pool_kv: count pooled keys/values; None: a built encoder's current setting, or a config's.
      layer_ratios: big.LITTLE only, one keep ratio per layer instead of ``keep_ratio`` (the
        layers diagnostic of the proxy benchmark runs some layers dense).

    Returns:
      {"patch_embed", "little", "router", "big_linear", "big_attention", "match", "context",
      "norm", "neck", "total"}; "context": the global-context modules. In the training-free mode
      (``training_free`` configs) "router" is the token score, "match" the copy rule's cosine
      matching, and layers follow the schedule.
    """
    if "Sam3" in type(model).__name__:  # transformers' SAM 3 backbone (lazy: needs transformers)
        from .hf.sam3_flops import sam3_encoder_macs

        return sam3_encoder_macs(model, keep_ratio)
    out = _encoder_parts(model, keep_ratio, pool_kv, layer_ratios)
    out["big_linear"] += out.pop("kv_unrouted")
    out["total"] = sum(out.values())
    return out


# The MAC split's parts, in table order, with their column titles.
SPLIT_PARTS = (
    ("little", "E-blocks"),
    ("kv_unrouted", "k/v of unrouted tokens"),
    ("embed_neck", "patch embed + neck"),
    ("routed_big", "routed big blocks"),
    ("attention", "attention"),
    ("router", "router"),
    ("norm", "LayerNorms"),
)


def mac_split(
    model: ModelOrConfig, keep_ratio: Optional[float] = None, pool_kv: Optional[bool] = None
) -> Dict[str, int]:
    """Where an encoder's MACs go, by the parts a lighter design can cut.

    Arguments: as :func:`encoder_macs`.

    Returns:
      {"little": E-blocks and global-context modules; "kv_unrouted": big-block key/value
      projections of the tokens the big block does not update (the pooled grid with ``pool_kv``);
      "embed_neck": patch embedding and neck; "routed_big": big-block projections and MLPs of the
      routed tokens (every token for SAM); "attention": big-block attention products; "router"
      (with the training-free mode's scores and copy matching); "norm": LayerNorms; "total"}.
      The parts sum to ``total``, which equals :func:`encoder_macs`'s.
    """
    parts = _encoder_parts(model, keep_ratio, pool_kv)
    out = {
        "little": parts["little"] + parts["context"],  # every token's cheap paths
        "kv_unrouted": parts["kv_unrouted"],
        "embed_neck": parts["patch_embed"] + parts["neck"],
        "routed_big": parts["big_linear"],
        "attention": parts["big_attention"],
        "router": parts["router"] + parts["match"],  # choosing tokens, and matching copies
        "norm": parts["norm"],
    }
    out["total"] = sum(out.values())
    return out


def _gmacs(macs: int) -> str:
    """GMACs with one decimal, or two below 1 (the router's few hundredths stay visible)."""
    return f"{macs / 1e9:.1f}" if macs >= 1e9 or macs == 0 else f"{macs / 1e9:.2f}"


def format_split_table(names: Sequence[str], ratios: Sequence[float], pool_kv: bool = True) -> str:
    """A markdown table of :func:`mac_split` in GMACs (share of the total in brackets) for
    registry ``names``, big.LITTLE ones at each of ``ratios`` (pooled keys/values below r = 1 when
    ``pool_kv``)."""
    head = " | ".join(title for _, title in SPLIT_PARTS)
    rows: List[str] = [
        f"| model | keep ratio | {head} | total GMACs |",
        "|---|---|" + "---|" * len(SPLIT_PARTS) + "---|",
    ]
    for name in names:
        cfg = get_config(name)
        big_little = isinstance(cfg, BigLittleConfig)
        for r in ratios if big_little else [1.0]:
            split = mac_split(cfg, r, pool_kv and r < 1.0) if big_little else mac_split(cfg)
            total = split["total"]
            cells = " | ".join(
                f"{_gmacs(split[key])} ({100 * split[key] / total:.0f}%)" for key, _ in SPLIT_PARTS
            )
            label = f"{r:g}" + (" pooled" if big_little and pool_kv and r < 1.0 else "")
            rows.append(
                f"| {name} | {label if big_little else '-'} | {cells} | {total / 1e9:.1f} |"
            )
    return "\n".join(rows)


def encoder_gmacs(
    model: ModelOrConfig, keep_ratio: Optional[float] = None, pool_kv: Optional[bool] = None
) -> float:
    """Total GMACs (1e9 multiply-adds) of one image through the encoder."""
    return encoder_macs(model, keep_ratio, pool_kv)["total"] / 1e9


def format_table(names: Sequence[str], ratios: Sequence[float]) -> str:
    """A markdown table of GMACs for registry ``names`` (big.LITTLE ones at each of ``ratios``)."""
    rows: List[str] = ["| model | keep ratio | GMACs | vs teacher |", "|---|---|---|---|"]
    for name in names:
        cfg = get_config(name)
        if isinstance(cfg, BigLittleConfig):
            base = encoder_gmacs(cfg.teacher)
            for r in ratios:
                g = encoder_gmacs(cfg, r)
                rows.append(f"| {name} | {r:g} | {g:.1f} | {base / g:.2f}x fewer |")
        else:
            rows.append(f"| {name} | - | {encoder_gmacs(cfg):.1f} | - |")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Print the GMACs table: ``python -m biglittle_sam.flops --models vit_b bl_b``."""
    parser = argparse.ArgumentParser(description="Analytic encoder GMACs (1024 x 1024, batch 1).")
    parser.add_argument("--models", nargs="+", default=["vit_b", "bl_b"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument(
        "--split",
        action="store_true",
        help="print where the MACs go (E-blocks, k/v of unrouted tokens, ...), pooled keys/values "
        "below r = 1",
    )
    args = parser.parse_args(argv)
    table = format_split_table if args.split else format_table
    print(table(args.models, args.ratios))


if __name__ == "__main__":
    main()

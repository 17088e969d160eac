"""Analytic MACs of SAM 3's ViT backbone, dense (stock) and routed (big.LITTLE: training-free or
the LITTLE-block form).

The count follows the code of ``Sam3ViTLayer`` and :class:`~.sam3_layer.BigLittleSam3ViTLayer`
operation by operation, in the parts :func:`biglittle_sam.flops.encoder_macs` reports (which calls
:func:`sam3_encoder_macs` for SAM 3 models and configs). Per layer, with N tokens, width C, MLP
width I, attention group L (w^2 windowed, N global), and T = (N / w^2) * ceil(r w^2) chosen tokens:

| | dense (SAM 3) | routed ("copy" / "identity") |
|---|---|---|
| q, o projections | 2 N C^2 | 2 T C^2 |
| k, v projections | 2 N C^2 | 2 N C^2 |
| attention (q k^T, a v) | 2 N L C | 2 T L C |
| MLP | 2 N C I | 2 T C I |
| copy matching (cosines) | - | N ceil(r w^2) C |
| token score | - | 2 N C (edge), N C (window_mean) |

"mlp_skip" keeps the dense attention and runs the MLP on the T chosen tokens. The LITTLE-block form
(``training_free=False``) routes by its router (N C, in "router") with no copy rule, chooses a
global layer's T = ceil(r N) tokens over the image, and adds each routed layer's E-block in
"little" (its LayerNorms in "norm"), counted as SAM 1's (2 N C d + 12 N d^2 + attention over its
windows, at every keep ratio). LayerNorms are counted at 5 MACs per element (as fvcore and
``flops.py`` count them); activations, RoPE, softmax and gathers are left out.
``torch.utils.flop_counter`` counts the matrix products and the patch convolution only: it sees
``total - norm - router`` in the training-free mode and ``total - norm`` in the LITTLE-block form,
whose router is a matrix product (checked in tests/test_hf_sam3*.py). The FPN neck
(``Sam3VisionNeck``) is not part of the backbone and is not counted.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from transformers import Sam3ViTConfig, Sam3ViTModel

from ..config import capacity, validate_keep_ratio
from .sam3_config import BigLittleSam3ViTConfig, _side, check_sam3_backbone, sam3_grid

__all__ = ["sam3_encoder_macs"]

_LN = 5  # fvcore's cost of a LayerNorm per element
# MACs per token and channel of the training-free scores (as flops.py counts SAM 1's).
_SCORE_MACS = {"window_mean": 1, "edge": 2, "random": 0}
_PARTS = ("patch_embed", "little", "router", "big_linear", "big_attention", "match", "context")


def _resolve(model: Any) -> Tuple[Sam3ViTConfig, float]:
    """The backbone config of ``model`` and the keep ratio it runs at now (1 for stock)."""
    if isinstance(model, Sam3ViTConfig):
        ratio = (getattr(model, "biglittle", None) or {}).get("keep_ratio", 1.0)
        return model, ratio
    found = [m for m in model.modules() if isinstance(m, Sam3ViTModel)]
    if len(found) != 1:
        raise ValueError(
            f"{type(model).__name__}: expected one SAM 3 ViT backbone, found {len(found)}"
        )
    backbone = found[0]
    return backbone.config, float(getattr(backbone, "keep_ratio", 1.0))


def _little_macs(cfg: BigLittleSam3ViTConfig) -> Tuple[int, int]:
    """One E-block's (products, LayerNorm) MACs, as SAM 1's cost model counts ``LittleBlock``
    (``flops._little_block``, which reads a SAM 1 config): down / up 2 N C d, qkv and proj
    4 Np d^2 on the Np tokens of the zero-padded windows, attention 2 Np w^2 d plus the decomposed
    relative-position products Np d 2 (2w - 1), MLP 2 N d (m d); LayerNorms on C (every token)
    and d (padded windows, then every token)."""
    bl = cfg.biglittle or {}
    C, d, w = cfg.hidden_size, bl["little_dim"], bl["little_window_size"]
    g = sam3_grid(cfg)
    N, Np = g * g, (g + (w - g % w) % w) ** 2
    attention = 4 * Np * d * d + 2 * Np * w * w * d + Np * d * 2 * (2 * w - 1)
    mlp = 2 * N * d * int(d * bl["little_mlp_ratio"])
    return 2 * N * C * d + attention + mlp, _LN * (N * C + (Np + N) * d)


def _learned(cfg: BigLittleSam3ViTConfig, layer: int, ratio: float) -> Dict[str, int]:
    """One routed layer of the LITTLE-block form, by part (its E-block included)."""
    C, hid = cfg.hidden_size, cfg.intermediate_size
    N = sam3_grid(cfg) ** 2
    windowed = cfg.window_size > 0 and layer not in cfg.global_attn_indexes
    group = cfg.window_size**2 if windowed else N
    k = capacity(ratio, group)
    if k >= group:  # SAM 3's layer after the E-block
        parts = _layer(cfg, layer, 1.0, False)
    else:
        T = (N // group) * k
        parts = {"router": N * C, "norm": _LN * (N + T) * C}
        parts["big_linear"] = 2 * T * C * C + 2 * N * C * C + 2 * T * C * hid
        parts["big_attention"] = 2 * T * group * C
    parts["little"], norms = _little_macs(cfg)
    parts["norm"] += norms  # the E-block's LayerNorms with the layer's, as a counter sees them
    return parts


def _layer(cfg: Sam3ViTConfig, layer: int, ratio: float, routed: bool) -> Dict[str, int]:
    """One layer's MACs, by part."""
    if routed and not (getattr(cfg, "biglittle", None) or {}).get("training_free", True):
        return _learned(cfg, layer, ratio)  # type: ignore[arg-type]
    C, hid = cfg.hidden_size, cfg.intermediate_size
    N = sam3_grid(cfg) ** 2
    windowed = cfg.window_size > 0 and layer not in cfg.global_attn_indexes
    group = cfg.window_size**2 if windowed else N
    w = cfg.select_window if isinstance(cfg, BigLittleSam3ViTConfig) else cfg.window_size
    k = capacity(ratio, w * w) if routed else w * w
    if not routed or k >= w * w:
        linear = 4 * N * C * C + 2 * N * C * hid
        return {"big_linear": linear, "big_attention": 2 * N * group * C, "norm": 2 * _LN * N * C}
    settings = cfg.biglittle or {}
    T = (N // (w * w)) * k
    parts = {"router": _SCORE_MACS[settings.get("token_score", "edge")] * N * C}
    parts["norm"] = _LN * (N + T) * C  # layer_norm1 on every token, layer_norm2 on the chosen
    if settings.get("skip_rule") == "mlp_skip":  # dense attention, the MLP on the chosen rows
        parts["big_linear"] = 4 * N * C * C + 2 * T * C * hid
        parts["big_attention"] = 2 * N * group * C
        return parts
    parts["big_linear"] = 2 * T * C * C + 2 * N * C * C + 2 * T * C * hid
    parts["big_attention"] = 2 * T * group * C
    if settings.get("skip_rule", "copy") == "copy":
        parts["match"] = N * k * C
    return parts


def sam3_encoder_macs(model: Any, keep_ratio: Optional[float] = None) -> Dict[str, int]:
    """MACs of one image through SAM 3's ViT backbone, by part.

    Arguments:
      model: a ``Sam3ViTConfig`` / :class:`BigLittleSam3ViTConfig`, or a model holding one SAM 3
        backbone (stock or big.LITTLE; ``Sam3Model``, ``Sam3TrackerModel``...).
      keep_ratio: big.LITTLE only; None: the model's current ratio (a config's own). A stock
        backbone counts densely at any ratio.

    Returns:
      {"patch_embed", "little", "router", "big_linear", "big_attention", "match", "context",
      "norm", "neck", "total"}, as :func:`biglittle_sam.flops.encoder_macs`; training-free:
      "router" is the token score, "match" the copy rule's cosines, "little" 0; the LITTLE-block
      form: "little" the E-blocks, "router" the routers, "match" 0; "context", "neck" are 0.
    """
    cfg, current = _resolve(model)
    check_sam3_backbone(cfg)
    ratio = current if keep_ratio is None else validate_keep_ratio(keep_ratio)
    big_little = isinstance(cfg, BigLittleSam3ViTConfig)
    routed = cfg.routed_layers() if big_little else (False,) * cfg.num_hidden_layers
    C, N = cfg.hidden_size, sam3_grid(cfg) ** 2
    out: Dict[str, int] = {name: 0 for name in _PARTS}
    out["patch_embed"] = N * C * cfg.num_channels * _side(cfg.patch_size, "patch_size") ** 2
    out["norm"] = _LN * N * C  # the backbone's layer_norm before the layers
    for i in range(cfg.num_hidden_layers):
        for name, value in _layer(cfg, i, ratio, routed[i]).items():
            out[name] += value
    out["neck"] = 0
    out["total"] = sum(out.values())
    return out

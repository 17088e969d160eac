"""The config of SAM 3's big.LITTLE backbone: ``Sam3ViTConfig`` plus the big.LITTLE settings.

:class:`BigLittleSam3ViTConfig` is transformers' ``Sam3ViTConfig`` with its own ``model_type``
(``"biglittle_sam3_vit"``) and one more field, ``biglittle``: the big.LITTLE settings as a dict
(the training-free mode's, or the LITTLE-block form's with ``"training_free": false``).
Everything SAM 3-shaped (widths, depth, windows, image size, RoPE) stays in ``Sam3ViTConfig``'s own
fields, so a stock backbone config becomes a big.LITTLE one by adding that dict, and a saved
``config.json`` reads::

    "backbone_config": {"model_type": "biglittle_sam3_vit", "hidden_size": 1024, ...,
                        "biglittle": {"keep_ratio": 0.5, "training_free": true, ...}}

The config is checked when made: a bad setting, a token grid that does not tile into the attention
windows, or a global-layer index out of range raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Tuple

from transformers import Sam3ViTConfig

from ..config import (
    DEFAULT_KEEP_RATIO,
    validate_keep_ratio,
    validate_skip_rule,
    validate_token_score,
)
from .configuration import square_side

__all__ = [
    "BigLittleSam3ViTConfig",
    "SAM3_BIGLITTLE_DEFAULTS",
    "sam3_grid",
    "sam3_config_with",
    "check_sam3_backbone",
]

# The big.LITTLE settings of a SAM 3 backbone, with the value a config gets when it names none.
# They mean what BigLittleConfig's fields of the same names mean for SAM 1 (config.py).
SAM3_BIGLITTLE_DEFAULTS: Dict[str, Any] = {
    # Share of each window's tokens that take SAM 3's layer (queries, MLP); the model owns it at
    # run time (BigLittleSam3ViTModel.keep_ratio, keep_ratio_context), this is its saved value.
    "keep_ratio": DEFAULT_KEEP_RATIO,
    # True: SAM 3's layers alone with the official weights, routed by a cheap score (nothing to
    # train). False: the LITTLE-block form, an E-block and a learned router beside each routed
    # layer (zero-initialised: exact at keep ratio 1), to be distilled.
    "training_free": True,
    "token_score": "edge",  # training-free: TOKEN_SCORES, how tokens are chosen (edge: best on dev)
    "skip_rule": "copy",  # training-free: SKIP_RULES, what a skipped token gets (copy: its match's)
    # Layers that run SAM 3's layer on every token (and, in the LITTLE-block form, have no E-block
    # and no router): the first, whose input (patch + position embedding) has no context yet.
    "dense_layers": [0],
    "dense_global": False,  # also run the global-attention layers on every token
    # The LITTLE-block form only (as BigLittleConfig's fields of the same names). None: hidden_size
    # / 4 (256 for SAM 3, as bl_l's d for a 1024-wide ViT), heads of 64 wide, windows of the
    # layers' window_size (24 for SAM 3).
    "little_dim": None,
    "little_heads": None,
    "little_mlp_ratio": 4.0,  # E-block MLP width / little_dim
    "little_window_size": None,
}


def _side(value: Any, name: str) -> int:
    """An int side of a SAM 3 config (an int or a square [n, n] pair)."""
    return square_side(value, name, owner="Sam3ViTConfig")


def sam3_grid(config: Sam3ViTConfig) -> int:
    """The side of the token grid (``image_size // patch_size``; 72 for SAM 3's 1008 / 14)."""
    side, patch = _side(config.image_size, "image_size"), _side(config.patch_size, "patch_size")
    if side % patch:
        raise ValueError(
            f"Sam3ViTConfig.image_size ({side}) must be a multiple of patch_size ({patch})"
        )
    return side // patch


def check_sam3_backbone(config: Sam3ViTConfig) -> None:
    """Raise ``ValueError`` unless the big.LITTLE layers can run ``config``'s geometry exactly.

    SAM 3's windowed layers pad a grid that does not tile into windows and attend to the padding
    (zero rows, whose keys are the projections' biases); its checkpoints never do (72 = 3 x 24).
    The routed layers choose tokens per window and need whole windows, so such a grid is refused.
    """
    grid = sam3_grid(config)
    depth = config.num_hidden_layers
    indexes = list(config.global_attn_indexes or [])
    bad = [
        i for i in indexes if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth
    ]
    if bad:
        raise ValueError(
            f"Sam3ViTConfig.global_attn_indexes {bad} are outside the layers 0..{depth - 1} "
            f"(num_hidden_layers={depth})"
        )
    windowed = config.window_size > 0 and len(set(indexes)) < depth
    if windowed and grid % config.window_size:
        fits = [w for w in range(1, grid + 1) if grid % w == 0]
        raise ValueError(
            f"Sam3ViTConfig: the {grid} x {grid} token grid (image_size {config.image_size} / "
            f"patch_size {config.patch_size}) does not tile into windows of {config.window_size}; "
            f"window_size must divide {grid} (one of {fits})"
        )
    rope = (config.rope_parameters or {}).get("rope_type", "axial")
    if rope != "axial":
        raise ValueError(f"Sam3ViTConfig.rope_parameters: rope_type must be 'axial', got {rope!r}")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"Sam3ViTConfig.hidden_size ({config.hidden_size}) must be divisible by "
            f"num_attention_heads ({config.num_attention_heads})"
        )


def _dense_layers(value: Any, depth: int) -> List[int]:
    """``dense_layers`` as a sorted list of layer indexes; ValueError naming the bad ones."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"biglittle.dense_layers must be a list of layer indexes, got {value!r}")
    bad = [i for i in value if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
    bad += [i for i in value if i not in bad and not 0 <= i < depth]
    if bad:
        raise ValueError(
            f"biglittle.dense_layers {bad} are not layers of this backbone (ints in 0..{depth - 1})"
        )
    return sorted({int(i) for i in value})


def _positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or ValueError naming ``biglittle.<name>``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"biglittle.{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _little(out: Dict[str, Any], hidden: int, window: int) -> None:
    """Resolve and check the LITTLE-block settings of ``out`` in place (None: the default)."""
    dim = out["little_dim"]
    out["little_dim"] = _positive_int(max(1, hidden // 4) if dim is None else dim, "little_dim")
    heads = out["little_heads"]
    heads = max(1, out["little_dim"] // 64) if heads is None else heads
    out["little_heads"] = _positive_int(heads, "little_heads")
    if out["little_dim"] % out["little_heads"]:
        raise ValueError(
            f"biglittle.little_dim ({out['little_dim']}) must be divisible by little_heads "
            f"({out['little_heads']})"
        )
    ratio = out["little_mlp_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not ratio > 0:
        raise ValueError(f"biglittle.little_mlp_ratio must be a number > 0, got {ratio!r}")
    out["little_mlp_ratio"] = float(ratio)
    side = out["little_window_size"]
    out["little_window_size"] = _positive_int(
        window if side is None else side, "little_window_size"
    )


def _biglittle(given: Dict[str, Any], config: Sam3ViTConfig, window: int) -> Dict[str, Any]:
    """The full, checked ``biglittle`` dict of ``config``: ``given`` over
    :data:`SAM3_BIGLITTLE_DEFAULTS` (``window``: the default E-block window side)."""
    unknown = sorted(set(given) - set(SAM3_BIGLITTLE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"biglittle: unknown settings {unknown}; expected a subset of "
            f"{sorted(SAM3_BIGLITTLE_DEFAULTS)}"
        )
    out = {**SAM3_BIGLITTLE_DEFAULTS, **given}
    for name in ("training_free", "dense_global"):
        if not isinstance(out[name], bool):
            raise ValueError(f"biglittle.{name} must be true or false, got {out[name]!r}")
    try:
        out["keep_ratio"] = validate_keep_ratio(out["keep_ratio"])
        validate_token_score(out["token_score"])
        validate_skip_rule(out["skip_rule"])
    except ValueError as error:
        raise ValueError(f"biglittle.{error}") from None
    out["dense_layers"] = _dense_layers(out["dense_layers"], config.num_hidden_layers)
    _little(out, config.hidden_size, window)
    return out


class BigLittleSam3ViTConfig(Sam3ViTConfig):
    """``Sam3ViTConfig`` plus ``biglittle``: the big.LITTLE settings, as a dict.

    ``biglittle`` may name any of :data:`SAM3_BIGLITTLE_DEFAULTS` (``keep_ratio``,
    ``training_free``, ``dense_layers``, ``dense_global``; training-free: ``token_score`` (one of
    ``TOKEN_SCORES``), ``skip_rule`` (one of ``SKIP_RULES``); the LITTLE-block form:
    ``little_dim``, ``little_heads``, ``little_mlp_ratio``, ``little_window_size``); the others take
    their defaults, and the stored dict names them all, resolved. ``teacher_checkpoint``: where the
    SAM 3 weights came from.
    """

    model_type = "biglittle_sam3_vit"

    biglittle: Optional[Dict[str, Any]] = None
    teacher_checkpoint: Optional[str] = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        check_sam3_backbone(self)
        self.biglittle = _biglittle(dict(self.biglittle or {}), self, self.select_window)

    @property
    def select_window(self) -> int:
        """The side of the windows tokens are chosen and matched in: ``window_size``, or the
        whole grid when no layer is windowed."""
        grid = sam3_grid(self)
        windowed = (
            self.window_size > 0 and len(set(self.global_attn_indexes)) < self.num_hidden_layers
        )
        return self.window_size if windowed else grid

    def routed_layers(self) -> Tuple[bool, ...]:
        """Per layer, whether it routes below keep ratio 1 (not in ``dense_layers``, and not a
        global layer under ``dense_global``)."""
        bl = self.biglittle or {}
        dense = set(bl.get("dense_layers", ()))
        globals_ = set(self.global_attn_indexes) if bl.get("dense_global") else set()
        return tuple(i not in dense and i not in globals_ for i in range(self.num_hidden_layers))


def sam3_config_with(config: Sam3ViTConfig, **biglittle: Any) -> BigLittleSam3ViTConfig:
    """A stock (or big.LITTLE) SAM 3 backbone config as a :class:`BigLittleSam3ViTConfig` with
    ``biglittle`` settings set (the others kept, or defaulted)."""
    data = config.to_dict()
    for key in ("model_type", "transformers_version"):
        data.pop(key, None)
    data["biglittle"] = {**(data.get("biglittle") or {}), **biglittle}
    attn = getattr(config, "_attn_implementation_internal", None)
    made = BigLittleSam3ViTConfig(**data)
    if attn is not None:
        made._attn_implementation = attn
    return made

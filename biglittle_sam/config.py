"""Model configurations: one frozen dataclass per size, overridden with ``dataclasses.replace``.

``build_sam.py`` is the only place that turns a config into modules; this file only holds numbers
and the reason for each. A checkpoint stores ``asdict(config)`` so that it can rebuild its own
model.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Type, Union

__all__ = [
    "SamViTConfig",
    "BigLittleConfig",
    "SAM_CONFIGS",
    "BIGLITTLE_CONFIGS",
    "get_config",
    "config_from_dict",
    "capacity",
    "window_capacities",
    "little_window",
    "validate_keep_ratio",
    "DEFAULT_KEEP_RATIO",
    "validate_pool_kv",
    "validate_routing",
    "ROUTING_MODES",
    "TOKEN_SCORES",
    "SKIP_RULES",
    "validate_token_score",
    "validate_skip_rule",
    "GLOBAL_CONTEXTS",
    "validate_global_context",
    "config_to_dict",
    "biglittle_config_for",
]


# A big.LITTLE model's keep ratio as built when nothing else names one: half of each group's
# tokens take the big path (every registered config; the encoder can change it at run time).
DEFAULT_KEEP_RATIO = 0.5


def validate_keep_ratio(keep_ratio: float, plain_sam: Optional[str] = None) -> float:
    """Return ``keep_ratio`` as a float, or raise ``ValueError`` unless it is a number in (0, 1].

    The one check of a keep ratio (configs, the encoder, settings, builders, specs, exporters).
    Booleans and strings are refused rather than converted.

    Arguments:
      keep_ratio: the share of each group's tokens that take the big path.
      plain_sam: the name of a plain SAM model or encoder the ratio is for, or None for
        big.LITTLE. Plain SAM runs every token through its big blocks, so its only ratio is 1.
    """
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    value = float(keep_ratio)
    if not 0.0 < value <= 1.0:  # also refuses NaN
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    if plain_sam is not None and value != 1.0:
        raise ValueError(
            f"{plain_sam} is plain SAM and has no keep ratio below 1 (got {keep_ratio}); keep "
            "ratios apply to big.LITTLE models (bl_*)"
        )
    return value


# "learned": the routers; "random": uniform noise (the ablation a router must beat);
# "update_norm": the tokens the big block would change most, ||Block(x) - x|| (runs the big block
# on every token, so it costs more than r = 1; level with the learned routers on the proxy).
ROUTING_MODES = ("learned", "random", "update_norm")


def validate_routing(routing: str) -> str:
    """Return ``routing``, or raise ``ValueError`` unless it is one of :data:`ROUTING_MODES`."""
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
    return routing


# Token scores of the training-free mode (modeling/training_free.py, benchmarks/training_free.md):
# "edge": gradient energy of the norm1 map (StructSAM's; best on the proxy dev split at every
# ratio); "window_mean": distance from the window's mean (no better than random at r <= 0.25 on
# dev); "random": uniform noise (the floor).
TOKEN_SCORES = ("edge", "window_mean", "random")
# What a skipped token gets: "copy": the update of its window's most similar chosen token (ToMe-SD's
# unmerge, best in the probe); "identity": nothing (loses a third of the quality); "mlp_skip":
# SparseSAM's rule (every token a query in attention, the chosen ones alone run the MLP).
SKIP_RULES = ("copy", "identity", "mlp_skip")


def validate_token_score(token_score: str) -> str:
    """Return ``token_score``, or raise ``ValueError`` unless it is one of :data:`TOKEN_SCORES`."""
    if token_score not in TOKEN_SCORES:
        raise ValueError(f"token_score must be one of {TOKEN_SCORES}, got {token_score!r}")
    return token_score


def validate_skip_rule(skip_rule: str) -> str:
    """Return ``skip_rule``, or raise ``ValueError`` unless it is one of :data:`SKIP_RULES`."""
    if skip_rule not in SKIP_RULES:
        raise ValueError(f"skip_rule must be one of {SKIP_RULES}, got {skip_rule!r}")
    return skip_rule


# What a skipped token sees beyond its window in global layers: "none" (the old layout), "pooled"
# (attention to the grid pooled P x P), "nearest" (a routed token's update); global_context.py.
GLOBAL_CONTEXTS = ("none", "pooled", "nearest")


def validate_global_context(global_context: str, grid_size: int = 0, pool: int = 0) -> str:
    """``global_context``, or ValueError unless in :data:`GLOBAL_CONTEXTS` (with P dividing it)."""
    if global_context not in GLOBAL_CONTEXTS:
        raise ValueError(f"global_context must be one of {GLOBAL_CONTEXTS}, got {global_context!r}")
    if global_context == "pooled" and grid_size and (pool < 1 or grid_size % pool):
        divisors = [p for p in range(1, grid_size + 1) if grid_size % p == 0]
        raise ValueError(
            f"global_context_pool: the {grid_size} x {grid_size} token grid is averaged to P x P "
            f"blocks, so P must divide {grid_size} (one of {divisors}), got {pool}"
        )
    return global_context


def validate_pool_kv(grid_size: int, window_size: int) -> None:
    """Raise ``ValueError`` unless 2 x 2 key pooling tiles the grid and every window exactly."""
    if grid_size % 2 or window_size % 2:
        raise ValueError(
            "pool_kv averages keys and values over 2 x 2 token blocks, so it needs an even token "
            f"grid and an even window size; got grid {grid_size} and window {window_size}"
        )


def little_window(config: "BigLittleConfig") -> int:
    """The E-blocks' window side: ``little_window_size``, or the P-blocks' ``window_size`` if 0."""
    return config.little_window_size or config.window_size


def capacity(keep_ratio: float, group_size: int) -> int:
    """Tokens a group of ``group_size`` sends to the big block: ``ceil(keep_ratio * group_size)``.

    Fixed by the ratio, never by the data, so every shape in the encoder is static. The small
    epsilon keeps binary rounding (0.3 * 10 = 3.0000000000000004) from adding a token.
    """
    return max(1, min(group_size, math.ceil(keep_ratio * group_size - 1e-9)))


def window_capacities(keep_ratio: float, grid: Tuple[int, int], window: int) -> Tuple[int, ...]:
    """Per-window capacities of a windowed layer, in row-major window order.

    A window at the bottom or right edge of the padded grid holds fewer real tokens than w * w
    (64 tokens in windows of 14: the last row and column of windows hold 8 x 14, 14 x 8 and 8 x 8).
    Each window sends ``capacity(keep_ratio, real tokens)`` to the big block, so the layer routes
    about ``keep_ratio * H * W`` tokens in all rather than ``keep_ratio * w * w`` per padded window
    (20% more at 64 / 14). Static: it depends on the grid and the ratio only.

    Arguments:
      keep_ratio: share of each window's real tokens that take the big path.
      grid: (H, W) token grid.
      window: window side w.

    Returns:
      one capacity per window, nH * nW of them.
    """
    H, W = grid
    rows = [min(window, H - i) for i in range(0, H, window)]
    cols = [min(window, W - j) for j in range(0, W, window)]
    return tuple(capacity(keep_ratio, r * c) for r in rows for c in cols)


@dataclass(frozen=True)
class SamViTConfig:
    """A SAM model with a ViT image encoder, as ``segment_anything`` builds it.

    The defaults are SAM ViT-B's. Every size choice for plain SAM and for big.LITTLE lives in these
    fields so that a tiny model is just another config.
    """

    name: str = "vit_b"  # registry key; also recorded in checkpoints
    img_size: int = 1024  # input side after ResizeLongestSide and padding
    patch_size: int = 16  # 1024 / 16 = 64 x 64 image embedding, as SAM's decoder expects
    in_chans: int = 3  # RGB
    embed_dim: int = 768  # ViT width C
    depth: int = 12  # number of transformer blocks
    num_heads: int = 12  # attention heads (head dim 64 for every SAM size)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * C
    window_size: int = 14  # windowed attention side; 64 pads to 70 = 5 x 14
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)  # blocks with global attention
    qkv_bias: bool = True  # SAM's attention has biases
    use_rel_pos: bool = True  # SAM's decomposed relative position bias
    out_chans: int = 256  # neck width = prompt embedding width
    decoder_depth: int = 2  # TwoWayTransformer depth
    decoder_mlp_dim: int = 2048  # TwoWayTransformer MLP width
    decoder_heads: int = 8  # TwoWayTransformer heads
    iou_head_hidden_dim: int = 256  # IoU prediction head width
    mask_in_chans: int = 16  # prompt encoder mask-downscaling width

    @property
    def grid_size(self) -> int:
        """Side of the token grid: ``img_size // patch_size`` (64 for 1024 / 16)."""
        return self.img_size // self.patch_size

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} are outside 0..{self.depth - 1}")
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")


@dataclass(frozen=True)
class BigLittleConfig(SamViTConfig):
    """A SAM model whose image encoder is the big.LITTLE encoder.

    The P-blocks (big) are shaped exactly like the blocks of the SAM config named by ``teacher``, so
    they inherit its weights. The E-blocks (LITTLE) and routers are new.
    """

    name: str = "bl_b"
    teacher: str = "vit_b"  # SAM whose weights the P-blocks inherit; distillation's teacher
    little_dim: int = 192  # E-block width d = C / 4: ~2NCd + 12Nd^2 MACs, small against 12NC^2
    little_heads: int = 3  # head dim 64 at d = 192, like SAM's heads
    little_mlp_ratio: float = 4.0  # E-block MLP width = little_mlp_ratio * d
    little_window_size: int = 0  # E-block attention window side; 0: the P-blocks' window_size
    # Share of each group's tokens that take the big path, as built (and in checkpoints); at run
    # time the encoder owns the ratio (keep_ratio, keep_ratio_context), starting from this.
    keep_ratio: float = DEFAULT_KEEP_RATIO
    fused_attn: bool = True  # scaled_dot_product_attention; False runs the explicit reference path
    routing: str = "learned"  # see ROUTING_MODES: "random" and "update_norm" are ablations
    # Keys/values of unrouted tokens averaged 2x2 (2 (rN + N/4) C^2 MACs for k/v instead of
    # 2 N C^2); exact at keep ratio 1. As built; at run time the encoder owns it (pool_kv).
    pool_kv: bool = False
    # Tokens whose patch is all padding (exact zeros, which a normalized pixel never is) are routed
    # last, so the big blocks go to the image. False routes them like any other (the paper's).
    skip_padding: bool = True
    # The training-free mode: SAM's blocks with their official weights route by a cheap score
    # (no E-blocks, no routers, nothing to train); the model then holds exactly SAM's weights.
    training_free: bool = False
    token_score: str = "edge"  # training-free only: how tokens are chosen, see TOKEN_SCORES
    skip_rule: str = "copy"  # training-free only: what a skipped token gets, see SKIP_RULES
    # Training-free only: layers that run SAM's block on every token. Default: the first, whose
    # input (patch plus position embedding) has no context yet for a score or a match to read.
    dense_layers: Tuple[int, ...] = (0,)
    # Training-free only: also run the global-attention layers densely (the probe keeps 48.7 of
    # 50.2 mIoU at r = 0.5 with them dense, 47.3 with them routed, at 80% against 65% of the MACs).
    dense_global: bool = False
    # The training-free layout with a learned correction (modeling/copy_little.py): routed layers
    # get an E-block (gamma 0 at the start) and a gate on the copied update (1 at the start), so a
    # fresh model is the training-free mode. Needs skip_rule "copy"; checkpoint version 3.
    little_correction: bool = False
    # GLOBAL_CONTEXTS. With "none" a skipped token sees only its window in global layers too;
    # "pooled" keeps more of the proxy teacher on dev at every ratio and seed, for +2.5% of bl_b's
    # MACs at r = 0.25 (docs/encoder.md). Not "none": checkpoint version 2. Learned, so the
    # training-free mode always reads "none".
    global_context: str = "pooled"
    global_context_pool: int = 8  # "pooled": P, the pooled grid's side (must divide the grid)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.little_dim % self.little_heads:
            raise ValueError(
                f"little_dim ({self.little_dim}) must be divisible by little_heads "
                f"({self.little_heads})"
            )
        if self.little_window_size < 0:
            raise ValueError(
                f"little_window_size must be >= 0 (0: window_size), got {self.little_window_size}"
            )
        validate_keep_ratio(self.keep_ratio)
        validate_routing(self.routing)
        validate_token_score(self.token_score)
        validate_skip_rule(self.skip_rule)
        if self.training_free:  # a learned module: the training-free mode has none
            object.__setattr__(self, "global_context", "none")
        validate_global_context(self.global_context, self.grid_size, self.global_context_pool)
        bad = [i for i in self.dense_layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"dense_layers {bad} are outside 0..{self.depth - 1}")
        if self.little_correction and not (self.training_free and self.skip_rule == "copy"):
            raise ValueError(
                "little_correction corrects the training-free copy rule: it needs training_free="
                f"True and skip_rule 'copy', got {self.training_free} and {self.skip_rule!r}"
            )
        if self.training_free and self.routing != "learned":
            raise ValueError(
                f"routing={self.routing!r} replaces the learned routers, which the training-free "
                f"mode does not have; choose its tokens with token_score (one of {TOKEN_SCORES})"
            )
        if self.pool_kv:
            validate_pool_kv(self.grid_size, self.window_size)


_VIT_B = SamViTConfig()
_VIT_L = dataclasses.replace(
    _VIT_B,
    name="vit_l",
    embed_dim=1024,
    depth=24,
    num_heads=16,
    global_attn_indexes=(5, 11, 17, 23),
)
_VIT_H = dataclasses.replace(
    _VIT_B,
    name="vit_h",
    embed_dim=1280,
    depth=32,
    num_heads=16,
    global_attn_indexes=(7, 15, 23, 31),
)
# Small enough for a unit test to run a forward pass in milliseconds, with a 16 x 16 grid that
# window 6 pads to 18 x 18, so padded windows are always exercised.
_VIT_TINY = SamViTConfig(
    name="vit_tiny",
    img_size=256,
    patch_size=16,
    embed_dim=64,
    depth=4,
    num_heads=2,
    window_size=6,
    global_attn_indexes=(1, 3),
    out_chans=32,
    decoder_mlp_dim=128,
    decoder_heads=4,
    iou_head_hidden_dim=64,
    mask_in_chans=8,
)


def biglittle_config_for(sam: SamViTConfig, name: str, **fields: Any) -> BigLittleConfig:
    """A big.LITTLE config whose P-blocks are shaped like ``sam`` (and inherit its weights).

    ``fields`` sets the big.LITTLE fields (``little_dim``, ``little_heads``, ``keep_ratio``...) or
    overrides any other. Use it for a custom-size teacher, e.g. a wider ``vit_tiny``.
    """
    base = {f.name: getattr(sam, f.name) for f in dataclasses.fields(SamViTConfig)}
    base.update(name=name, teacher=sam.name, **fields)
    return BigLittleConfig(**base)


SAM_CONFIGS: Dict[str, SamViTConfig] = {
    "vit_b": _VIT_B,
    "vit_l": _VIT_L,
    "vit_h": _VIT_H,
    "vit_tiny": _VIT_TINY,
}

BIGLITTLE_CONFIGS: Dict[str, BigLittleConfig] = {
    "bl_b": biglittle_config_for(_VIT_B, "bl_b", little_dim=192, little_heads=3),
    "bl_l": biglittle_config_for(_VIT_L, "bl_l", little_dim=256, little_heads=4),
    "bl_h": biglittle_config_for(_VIT_H, "bl_h", little_dim=320, little_heads=5),
    "bl_tiny": biglittle_config_for(_VIT_TINY, "bl_tiny", little_dim=16, little_heads=2),
    # bl_b with a quarter of its E-block MACs: at r = 0.1 pooled the E-blocks at d = 192 are about
    # a third of bl_b's MACs (docs/speed.md). Half the width (d = 96, two heads of 48) and half
    # the MLP ratio cut the E-block's attention and MLP by 4x and its down/up projections by 2x;
    # keys and values pooled 2 x 2 because that is how the low ratios run. Same big blocks as bl_b.
    "bl_b_lite": biglittle_config_for(
        _VIT_B,
        "bl_b_lite",
        little_dim=96,
        little_heads=2,
        little_mlp_ratio=2.0,
        pool_kv=True,
    ),
}

AnyConfig = Union[SamViTConfig, BigLittleConfig]


def get_config(name: str) -> AnyConfig:
    """The registered config called ``name`` (``vit_b``, ``bl_b``, ``bl_tiny``, ...)."""
    if name in BIGLITTLE_CONFIGS:
        return BIGLITTLE_CONFIGS[name]
    if name in SAM_CONFIGS:
        return SAM_CONFIGS[name]
    known = ", ".join(sorted({**SAM_CONFIGS, **BIGLITTLE_CONFIGS}))
    raise KeyError(f"unknown model config {name!r}; known configs: {known}")


# Fields of a stored config that size the model: each must be a whole number >= 1 (>= 0 for
# little_window_size, where 0 means window_size), or a positive ratio.
_POSITIVE_INTS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "window_size",
    "out_chans",
    "decoder_depth",
    "decoder_mlp_dim",
    "decoder_heads",
    "iou_head_hidden_dim",
    "mask_in_chans",
    "little_dim",
    "little_heads",
    "global_context_pool",
)
_POSITIVE_FLOATS = ("mlp_ratio", "little_mlp_ratio", "keep_ratio")


def _field_type_error(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"config field '{name}' must be {expected}, got {value!r}")


def _check_config_fields(cls: Type[SamViTConfig], data: Mapping[str, Any]) -> Dict[str, Any]:
    """``data`` with its types and sizes checked, field by field, before a config is made.

    Raises:
      ValueError: naming the first field of the wrong type or size and the expected form.
    """
    values = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, default = values[f.name], f.default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _field_type_error(f.name, value, "true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise _field_type_error(f.name, value, "an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _field_type_error(f.name, value, "a number")
            if not math.isfinite(value):
                raise _field_type_error(f.name, value, "a finite number")
            values[f.name] = float(value)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise _field_type_error(f.name, value, "a string")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or any(
                isinstance(i, bool) or not isinstance(i, int) for i in value
            ):
                raise _field_type_error(f.name, value, "a list of integers")
            values[f.name] = tuple(value)
        if f.name in _POSITIVE_INTS and value < 1:
            raise _field_type_error(f.name, value, "a positive integer")
        if f.name in _POSITIVE_FLOATS and value <= 0:
            raise _field_type_error(f.name, value, "a positive number")
        if f.name == "little_window_size" and value < 0:
            raise _field_type_error(f.name, value, "an integer >= 0 (0: window_size)")
    out_chans = values.get("out_chans", cls.out_chans)
    heads = values.get("decoder_heads", cls.decoder_heads)
    if out_chans % 2 or (out_chans // 2) % heads:
        raise ValueError(
            f"config field 'decoder_heads' ({heads}) must divide out_chans / 2 "
            f"({out_chans} / 2): the decoder's cross-attention runs at half width"
        )
    mask_in_chans = values.get("mask_in_chans", cls.mask_in_chans)
    if mask_in_chans < 4:
        raise _field_type_error("mask_in_chans", mask_in_chans, "an integer >= 4")
    return values


def config_from_dict(data: Mapping[str, Any]) -> AnyConfig:
    """Rebuild a config from ``asdict(config)`` as stored in a checkpoint.

    A dict with big.LITTLE fields gives a ``BigLittleConfig``. Unknown keys raise ``ValueError`` so
    that a checkpoint from a newer, incompatible version is not silently misread. Every field's
    type and size is checked first (integers >= 1 for sizes, finite positive ratios, lists of
    integers), so a bad value gives a ``ValueError`` naming the field, never a deep error.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a model config must be a dict, got {type(data).__name__}")
    cls: Type[SamViTConfig] = BigLittleConfig if "little_dim" in data else SamViTConfig
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(names)}"
        )
    old = {"global_context": "none"} if cls is BigLittleConfig else {}  # stored before the field
    return cls(**{**old, **_check_config_fields(cls, data)})


def config_to_dict(config: SamViTConfig) -> Dict[str, Any]:
    """``asdict(config)`` with tuples as lists: safe for ``weights_only`` loading and JSON
    (``global_context`` "none" and ``little_correction`` False leave their fields out: older
    code, refusing them, still reads it)."""
    out = dataclasses.asdict(config)
    if out.get("global_context") == "none":
        del out["global_context"], out["global_context_pool"]
    if out.get("little_correction") is False:
        del out["little_correction"]
    out["global_attn_indexes"] = list(out["global_attn_indexes"])
    if "dense_layers" in out:
        out["dense_layers"] = list(out["dense_layers"])
    return out

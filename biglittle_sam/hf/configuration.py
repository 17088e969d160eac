"""transformers configs for a big.LITTLE ``SamModel``, and the map to and from this project's.

:class:`BigLittleSamConfig` is transformers' ``SamConfig`` with its own ``model_type``
(``"biglittle_sam"``) and a vision config, :class:`BigLittleSamVisionConfig`, that adds one field,
``biglittle``: the big.LITTLE settings of :class:`~biglittle_sam.config.BigLittleConfig` that SAM
does not have (mode, keep ratio, E-block sizes, token score...), as a dict. Everything SAM-shaped
(widths, depth, windows, image size) stays in ``SamVisionConfig``'s own fields, so a stock SAM
config becomes a big.LITTLE one by adding that dict, and ``config.json`` reads::

    "vision_config": {"model_type": "biglittle_sam_vision_model", "hidden_size": 768, ...,
                      "biglittle": {"training_free": true, "keep_ratio": 0.5, ...}}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Union

from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

from ..config import (
    DEFAULT_KEEP_RATIO,
    SAM_CONFIGS,
    BigLittleConfig,
    SamViTConfig,
    config_from_dict,
    config_to_dict,
)

__all__ = [
    "BigLittleSamConfig",
    "BigLittleSamVisionConfig",
    "BIGLITTLE_FIELDS",
    "biglittle_config_from_hf",
    "square_side",
    "hf_config_from_sam",
    "sam_config_from_hf",
    "vision_config_with",
]

# The fields of a BigLittleConfig that plain SAM has no counterpart for (plus its name).
BIGLITTLE_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(BigLittleConfig)
    if f.name == "name" or f.name not in {g.name for g in dataclasses.fields(SamViTConfig)}
)
# What a big.LITTLE SamModel is when a config names nothing else: SAM's own weights in the
# training-free mode (what a transformers user swapping a Hub checkpoint gets) at the default ratio.
HF_DEFAULTS: Dict[str, Any] = {
    "name": "bl_hf",
    "teacher": "sam",
    "training_free": True,
    "keep_ratio": DEFAULT_KEEP_RATIO,
}
_SAM_PARTS = ("vision_config", "prompt_encoder_config", "mask_decoder_config")


# (transformers' name, this project's SamViTConfig name) of the fields that map one to one. The
# image and patch sides, the MLP width, the global layers and the Fourier width are converted.
_VISION_NAMES = (
    ("hidden_size", "embed_dim"),
    ("output_channels", "out_chans"),
    ("num_hidden_layers", "depth"),
    ("num_attention_heads", "num_heads"),
    ("num_channels", "in_chans"),
    ("qkv_bias", "qkv_bias"),
    ("use_rel_pos", "use_rel_pos"),
    ("window_size", "window_size"),
)
_PROMPT_NAMES = (
    ("hidden_size", "out_chans"),
    ("image_size", "img_size"),
    ("patch_size", "patch_size"),
    ("mask_input_channels", "mask_in_chans"),
)
_DECODER_NAMES = (  # the first is the shared width, set by the vision config
    ("hidden_size", "out_chans"),
    ("mlp_dim", "decoder_mlp_dim"),
    ("num_hidden_layers", "decoder_depth"),
    ("num_attention_heads", "decoder_heads"),
    ("iou_head_hidden_dim", "iou_head_hidden_dim"),
)


class BigLittleSamVisionConfig(SamVisionConfig):
    """``SamVisionConfig`` plus ``biglittle``: the big.LITTLE settings, as a dict.

    ``biglittle`` may name any field of :data:`BIGLITTLE_FIELDS` (``keep_ratio``,
    ``training_free``, ``little_dim``, ``token_score``...); the others take their defaults
    (:data:`HF_DEFAULTS`, then :class:`~biglittle_sam.config.BigLittleConfig`'s, with E-blocks a
    quarter of ``hidden_size`` wide), and the stored dict names them all. The whole config is
    checked when it is made: a bad value raises ``ValueError`` naming the field.
    """

    model_type = "biglittle_sam_vision_model"
    base_config_key = "vision_config"

    biglittle: Optional[Dict[str, Any]] = None
    # Where the SAM weights came from, as this project's checkpoints record it
    # ("vit_b:sam_vit_b_01ec64.pth"; a swapped Hub model: its name, "facebook/sam-vit-base").
    teacher_checkpoint: Optional[str] = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        given = dict(self.biglittle or {})
        unknown = sorted(set(given) - set(BIGLITTLE_FIELDS))
        if unknown:
            raise ValueError(
                f"vision_config.biglittle: unknown fields {unknown}; expected a subset of "
                f"{sorted(BIGLITTLE_FIELDS)}"
            )
        little_dim = int(given.get("little_dim") or max(1, self.hidden_size // 4))
        heads = max(1, little_dim // 64)  # head width 64 where the width allows it
        defaults = dict(HF_DEFAULTS, little_dim=little_dim)
        defaults["little_heads"] = heads if little_dim % heads == 0 else 1
        merged = {**defaults, **given}
        config = biglittle_config_from_hf(self, merged)  # validates every field
        own = config_to_dict(config)
        self.biglittle = {k: own[k] for k in BIGLITTLE_FIELDS if k in own}


def square_side(value: Any, name: str, owner: str = "vision_config") -> int:
    """An int side from an int or a square [h, w] pair; ValueError naming ``owner.name``
    otherwise."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{owner}.{name} must be square (one int or [n, n]), got {value}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")
    return value


def _encoder_fields(vision: SamVisionConfig) -> Dict[str, Any]:
    """The SamViTConfig fields a transformers vision config fixes, after checking that this
    project's encoder computes what transformers' does with it."""
    problems = []
    if vision.hidden_act != "gelu":
        problems.append(f"hidden_act={vision.hidden_act!r} (SAM's encoder uses 'gelu')")
    if abs(vision.layer_norm_eps - 1e-6) > 1e-12:
        problems.append(f"layer_norm_eps={vision.layer_norm_eps} (SAM's encoder uses 1e-6)")
    if not vision.use_abs_pos:
        problems.append("use_abs_pos=False (the encoder always adds SAM's position embedding)")
    width = vision.hidden_size
    ratio = vision.mlp_dim / width
    if int(width * ratio) != vision.mlp_dim:
        problems.append(f"mlp_dim={vision.mlp_dim} is not int(hidden_size * r) for any float r")
    if problems:
        raise ValueError(
            "this SAM vision config cannot run as a big.LITTLE encoder: " + "; ".join(problems)
        )
    return dict(
        {ours: getattr(vision, theirs) for theirs, ours in _VISION_NAMES},
        img_size=square_side(vision.image_size, "image_size"),
        patch_size=square_side(vision.patch_size, "patch_size"),
        mlp_ratio=ratio,
        global_attn_indexes=tuple(vision.global_attn_indexes),
    )


def biglittle_config_from_hf(
    vision: SamVisionConfig, biglittle: Optional[Mapping[str, Any]] = None
) -> BigLittleConfig:
    """The :class:`BigLittleConfig` of the encoder a transformers vision config describes.

    Arguments:
      vision: a ``SamVisionConfig`` (or :class:`BigLittleSamVisionConfig`).
      biglittle: the big.LITTLE fields; default: ``vision.biglittle``.

    Raises:
      ValueError: a field the encoder cannot honour (another activation, no absolute position
        embedding...), or a bad big.LITTLE field, named.
    """
    fields = dict(biglittle if biglittle is not None else getattr(vision, "biglittle", None) or {})
    # The encoder alone: the decoder is transformers' (sized by its own config), so the decoder
    # fields only need values every width accepts (one head; sam_config_from_hf sets them all).
    return config_from_dict({**_encoder_fields(vision), "decoder_heads": 1, **fields})


def vision_config_with(vision: SamVisionConfig, **biglittle: Any) -> BigLittleSamVisionConfig:
    """A stock (or big.LITTLE) vision config as a :class:`BigLittleSamVisionConfig` with
    ``biglittle`` fields set (the others kept, or defaulted)."""
    data = vision.to_dict()
    data.pop("model_type", None)
    data.pop("transformers_version", None)
    data["biglittle"] = {**(data.get("biglittle") or {}), **biglittle}
    return BigLittleSamVisionConfig(**data)


class BigLittleSamConfig(SamConfig):
    """``SamConfig`` whose vision config is a :class:`BigLittleSamVisionConfig`.

    Checked when made: the prompt encoder's image size and embedding grid must be the vision
    encoder's, and the three parts' widths must agree (``ValueError`` naming both values).
    """

    model_type = "biglittle_sam"
    sub_configs_defaults = {
        "prompt_encoder_config": SamPromptEncoderConfig,
        "mask_decoder_config": SamMaskDecoderConfig,
        "vision_config": BigLittleSamVisionConfig,
    }

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.vision_config, dict):  # a stock config's dict names its own type
            self.vision_config = {k: v for k, v in self.vision_config.items() if k != "model_type"}
        elif isinstance(self.vision_config, SamVisionConfig) and not isinstance(
            self.vision_config, BigLittleSamVisionConfig
        ):
            self.vision_config = vision_config_with(self.vision_config)
        super().__post_init__(**kwargs)
        check_sam_parts(self)


def check_sam_parts(config: SamConfig) -> None:
    """Raise ``ValueError`` unless the vision, prompt and decoder parts of ``config`` fit."""
    vision, prompt, decoder = (getattr(config, k) for k in _SAM_PARTS)
    side = square_side(vision.image_size, "image_size")
    patch = square_side(vision.patch_size, "patch_size")
    grid = side // patch
    checks = [
        ("prompt_encoder_config.image_size", prompt.image_size, "vision_config.image_size", side),
        (
            "prompt_encoder_config.image_embedding_size",
            prompt.image_embedding_size,
            "the vision grid (image_size // patch_size)",
            grid,
        ),
        (
            "prompt_encoder_config.hidden_size",
            prompt.hidden_size,
            "vision_config.output_channels",
            vision.output_channels,
        ),
        (
            "mask_decoder_config.hidden_size",
            decoder.hidden_size,
            "vision_config.output_channels",
            vision.output_channels,
        ),
    ]
    if side % patch:
        raise ValueError(
            f"vision_config.image_size ({side}) must be a multiple of patch_size ({patch})"
        )
    for name, value, other, expected in checks:
        if value != expected:
            raise ValueError(f"{name} is {value}, but {other} is {expected}; they must be equal")


def hf_config_from_sam(config: SamViTConfig) -> Union[SamConfig, BigLittleSamConfig]:
    """The transformers config of a SAM or big.LITTLE model of this project (for conversion)."""
    vision: Dict[str, Any] = {theirs: getattr(config, ours) for theirs, ours in _VISION_NAMES}
    vision.update(
        image_size=config.img_size,
        patch_size=config.patch_size,
        mlp_ratio=config.mlp_ratio,
        mlp_dim=int(config.embed_dim * config.mlp_ratio),
        global_attn_indexes=list(config.global_attn_indexes),
        num_pos_feats=config.out_chans // 2,
    )
    prompt = {theirs: getattr(config, ours) for theirs, ours in _PROMPT_NAMES}
    decoder = {theirs: getattr(config, ours) for theirs, ours in _DECODER_NAMES}
    if not isinstance(config, BigLittleConfig):
        return SamConfig(
            vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
        )
    own = config_to_dict(config)
    vision["biglittle"] = {k: own[k] for k in BIGLITTLE_FIELDS if k in own}
    return BigLittleSamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )


def sam_config_from_hf(config: SamConfig, name: str = "vit_custom") -> SamViTConfig:
    """This project's config of a transformers ``SamConfig`` / :class:`BigLittleSamConfig`.

    Arguments:
      config: the transformers config.
      name: the name a plain SAM gets (``vit_b``... when its sizes are a registered SAM's).

    Raises:
      ValueError: a part this project's SAM cannot build (another decoder depth of its MLP heads,
        Fourier features of another width...), named.
    """
    check_sam_parts(config)
    vision, prompt, decoder = (getattr(config, k) for k in _SAM_PARTS)
    problems = []
    if vision.num_pos_feats * 2 != vision.output_channels:
        problems.append(
            f"vision_config.num_pos_feats={vision.num_pos_feats} (SAM uses output_channels // 2)"
        )
    fixed = [
        (decoder, "mask_decoder_config", "iou_head_depth", 3),
        (decoder, "mask_decoder_config", "num_multimask_outputs", 3),
        (decoder, "mask_decoder_config", "attention_downsample_rate", 2),
        (prompt, "prompt_encoder_config", "num_point_embeddings", 4),
    ]
    problems += [
        f"{part}.{k}={getattr(c, k)} (SAM: {v})" for c, part, k, v in fixed if getattr(c, k) != v
    ]
    if problems:
        raise ValueError(
            "this SamConfig has no segment_anything counterpart: " + "; ".join(problems)
        )
    fields = _encoder_fields(vision)
    fields.update({ours: getattr(decoder, theirs) for theirs, ours in _DECODER_NAMES[1:]})
    fields["mask_in_chans"] = prompt.mask_input_channels
    if isinstance(vision, BigLittleSamVisionConfig):
        return config_from_dict({**fields, **(vision.biglittle or {})})
    plain = SamViTConfig(name=name, **fields)
    for registered in SAM_CONFIGS.values():
        if dataclasses.replace(registered, name=name) == plain:
            return registered
    return plain

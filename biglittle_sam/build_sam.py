"""The model registry: every size choice is made here, from the configs in ``config.py``.

``sam_model_registry[name](checkpoint=None, sam_checkpoint=None, keep_ratio=None, **overrides)``
returns an upstream ``segment_anything.modeling.Sam`` in eval mode, so ``SamPredictor`` and
``SamAutomaticMaskGenerator`` take it unchanged.

- ``default``, ``vit_h``, ``vit_l``, ``vit_b``: built by ``segment_anything`` itself; ``checkpoint``
  is an official SAM checkpoint.
- ``vit_tiny``: a plain SAM at test size (the toy benchmark's teacher).
- ``bl_b``, ``bl_l``, ``bl_h``, ``bl_tiny``: big.LITTLE. ``checkpoint`` is a full big.LITTLE SAM
  checkpoint (loaded strictly); ``sam_checkpoint`` is an official SAM checkpoint to inherit the
  patch and position embeddings, the P-blocks, the neck, the prompt encoder and the mask decoder
  from.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from segment_anything import sam_model_registry as upstream_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from .checkpoint import (
    CheckpointError,
    describe_state_dict,
    guess_model_name,
    load_state_dict_strict,
    read_checkpoint,
    split_checkpoint,
)
from .config import (
    BIGLITTLE_CONFIGS,
    SAM_CONFIGS,
    BigLittleConfig,
    SamViTConfig,
    config_from_dict,
    validate_keep_ratio,
)
from .modeling import ImageEncoderBigLittle
from .modeling.encoder_ops import (
    get_keep_ratio,
    keep_ratio_context,
    model_config,
    set_keep_ratio,
    swap_image_encoder,
)

__all__ = [
    "sam_model_registry",
    "build_sam_from_config",
    "swap_image_encoder",
    "set_keep_ratio",
    "get_keep_ratio",
    "keep_ratio_context",
    "model_config",
    "inherit_from_sam",
]

PathLike = Union[str, os.PathLike]
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's ImageNet normalization, in 0..255
PIXEL_STD = (58.395, 57.12, 57.375)
# Keys of a big.LITTLE model that a plain SAM checkpoint cannot provide: they start fresh.
NEW_IN_BIGLITTLE = (".little.", ".router.")


def _build_vit_encoder(config: SamViTConfig) -> ImageEncoderViT:
    return ImageEncoderViT(
        depth=config.depth,
        embed_dim=config.embed_dim,
        img_size=config.img_size,
        mlp_ratio=config.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.num_heads,
        patch_size=config.patch_size,
        qkv_bias=config.qkv_bias,
        use_rel_pos=config.use_rel_pos,
        global_attn_indexes=tuple(config.global_attn_indexes),
        window_size=config.window_size,
        out_chans=config.out_chans,
    )


def build_sam_from_config(config: SamViTConfig) -> Sam:
    """An upstream ``Sam`` with freshly initialized weights, in eval mode.

    A ``BigLittleConfig`` gets an :class:`ImageEncoderBigLittle`; a ``SamViTConfig`` gets SAM's own
    ``ImageEncoderViT``. Prompt encoder and mask decoder are ``segment_anything``'s, sized by
    the config.
    """
    encoder: nn.Module
    if isinstance(config, BigLittleConfig):
        encoder = ImageEncoderBigLittle(config)
    else:
        encoder = _build_vit_encoder(config)
    grid = config.grid_size
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=config.out_chans,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.out_chans,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
            ),
            transformer_dim=config.out_chans,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    sam.eval()
    return sam


def _check_sam_flat(state: Dict[str, torch.Tensor], path: PathLike) -> None:
    if not any(k.startswith("image_encoder.") for k in state):
        raise CheckpointError(
            f"{path}: not a whole-SAM checkpoint (no 'image_encoder.' keys); it looks like "
            f"{describe_state_dict(state)}. An encoder-only file must first be merged with SAM's "
            "prompt encoder and mask decoder: tools/convert_checkpoint.py"
        )


def _plain_sam_path(
    name: str,
    checkpoint: Optional[PathLike],
    sam_checkpoint: Optional[PathLike],
    keep_ratio: Optional[float],
) -> Optional[PathLike]:
    """The checkpoint of a plain SAM builder call (either argument names it), after checks."""
    if checkpoint is not None and sam_checkpoint is not None:
        raise ValueError(f"{name}: give checkpoint or sam_checkpoint, not both (they are the same)")
    if keep_ratio is not None and validate_keep_ratio(keep_ratio) != 1.0:
        raise ValueError(f"{name} is plain SAM and has no keep ratio below 1 (got {keep_ratio})")
    return checkpoint if checkpoint is not None else sam_checkpoint


def _build_upstream(name: str) -> Callable[..., Sam]:
    def builder(
        checkpoint: Optional[PathLike] = None,
        sam_checkpoint: Optional[PathLike] = None,
        keep_ratio: Optional[float] = None,
        **overrides: Any,
    ) -> Sam:
        path = _plain_sam_path(name, checkpoint, sam_checkpoint, keep_ratio)
        if overrides:
            raise TypeError(
                f"{name} is built by segment_anything unchanged and takes no overrides "
                f"(got {sorted(overrides)}); use 'vit_tiny' or build_sam_from_config for "
                "custom sizes"
            )
        sam = upstream_registry[name](checkpoint=None)
        if path is not None:
            state, _ = split_checkpoint(read_checkpoint(path), path)
            _check_sam_flat(state, path)
            load_state_dict_strict(sam, state, path, name)
        sam.eval()
        return sam

    builder.__name__ = f"build_sam_{name}"
    builder.__doc__ = (
        f"SAM '{name}' as segment_anything builds it; checkpoint: an official SAM file."
    )
    return builder


def _build_tiny_sam(
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    **overrides: Any,
) -> Sam:
    """A plain SAM at test size (``vit_tiny``); ``overrides`` replace config fields."""
    path = _plain_sam_path("vit_tiny", checkpoint, sam_checkpoint, keep_ratio)
    config = SAM_CONFIGS["vit_tiny"]
    state: Optional[Dict[str, torch.Tensor]] = None
    if path is not None:
        state, meta = split_checkpoint(read_checkpoint(path), path)
        _check_sam_flat(state, path)
        if isinstance(meta.get("config"), dict):
            config = _config_in_checkpoint(meta["config"], path, SamViTConfig)
    config = dataclasses.replace(config, **overrides)
    sam = build_sam_from_config(config)
    if state is not None:
        load_state_dict_strict(sam, state, path or "", config.name)
    return sam


def _config_in_checkpoint(data: Dict[str, Any], path: PathLike, cls: type) -> Any:
    try:
        config = config_from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its stored config is not valid: {e}") from None
    if type(config) is not cls:
        raise CheckpointError(
            f"{path}: holds a {type(config).__name__} ('{config.name}'), expected a {cls.__name__}"
        )
    return config


def _build_biglittle(name: str) -> Callable[..., Sam]:
    def builder(
        checkpoint: Optional[PathLike] = None,
        sam_checkpoint: Optional[PathLike] = None,
        keep_ratio: Optional[float] = None,
        **overrides: Any,
    ) -> Sam:
        config = BIGLITTLE_CONFIGS[name]
        state: Optional[Dict[str, torch.Tensor]] = None
        teacher: Optional[str] = None
        if checkpoint is not None:
            state, meta = split_checkpoint(read_checkpoint(checkpoint), checkpoint)
            _check_sam_flat(state, checkpoint)
            if isinstance(meta.get("config"), dict):
                config = _config_in_checkpoint(meta["config"], checkpoint, BigLittleConfig)
                if config.name != name:
                    raise CheckpointError(
                        f"{checkpoint}: is a '{config.name}' checkpoint, not '{name}'; "
                        "build it with "
                        f"sam_model_registry['{config.name}']"
                    )
            teacher = meta.get("teacher") if isinstance(meta.get("teacher"), str) else None
        config = dataclasses.replace(config, **overrides)
        if keep_ratio is not None:
            config = dataclasses.replace(config, keep_ratio=validate_keep_ratio(keep_ratio))
        sam = build_sam_from_config(config)
        if sam_checkpoint is not None:
            teacher = inherit_from_sam(sam, sam_checkpoint)
        if state is not None:
            load_state_dict_strict(sam, state, checkpoint or "", name)
        sam.image_encoder.teacher = teacher or config.teacher
        sam.eval()
        return sam

    builder.__name__ = f"build_sam_{name}"
    builder.__doc__ = (
        f"big.LITTLE SAM '{name}'. checkpoint: a full big.LITTLE SAM checkpoint (strict); "
        "sam_checkpoint: an official SAM checkpoint to inherit from; keep_ratio in (0, 1]."
    )
    return builder


def inherit_from_sam(sam: Sam, sam_checkpoint: PathLike) -> str:
    """Load an official SAM checkpoint into a big.LITTLE ``Sam``: every SAM weight, strictly.

    The patch and position embeddings, the P-blocks, the neck, the prompt encoder and the mask
    decoder come from the file; E-blocks (gamma 0) and routers keep their fresh values. Returns the
    teacher tag recorded in checkpoints, ``"<sam name>:<file name>"``.
    """
    encoder = sam.image_encoder
    if not isinstance(encoder, ImageEncoderBigLittle):
        raise TypeError(f"expected a big.LITTLE SAM model, got encoder {type(encoder).__name__}")
    name = encoder.config.name
    sam_state, _ = split_checkpoint(read_checkpoint(sam_checkpoint), sam_checkpoint)
    _check_sam_flat(sam_state, sam_checkpoint)
    looks_like = guess_model_name(sam_state)
    if looks_like is not None and looks_like.startswith("bl_"):
        raise CheckpointError(
            f"{sam_checkpoint}: is a big.LITTLE checkpoint ({looks_like}); pass it as "
            "checkpoint=..., sam_checkpoint is for official SAM files"
        )
    load_state_dict_strict(sam, sam_state, sam_checkpoint, name, allowed_missing=NEW_IN_BIGLITTLE)
    return f"{encoder.config.teacher}:{Path(sam_checkpoint).name}"


sam_model_registry: Dict[str, Callable[..., Sam]] = {
    "default": _build_upstream("default"),
    "vit_h": _build_upstream("vit_h"),
    "vit_l": _build_upstream("vit_l"),
    "vit_b": _build_upstream("vit_b"),
    "vit_tiny": _build_tiny_sam,
    "bl_b": _build_biglittle("bl_b"),
    "bl_l": _build_biglittle("bl_l"),
    "bl_h": _build_biglittle("bl_h"),
    "bl_tiny": _build_biglittle("bl_tiny"),
}

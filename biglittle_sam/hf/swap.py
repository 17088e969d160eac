"""The swap for transformers users, and models between segment_anything and transformers.

    model = SamModel.from_pretrained("facebook/sam-vit-base")
    model = biglittle_sam.hf.to_biglittle(model, keep_ratio=0.5)   # the one line

:func:`to_biglittle` gives any loaded ``SamModel`` (every SAM size, SlimSAM's pruned ones too) the
big.LITTLE encoder with its own vision weights, in the training-free mode (nothing to train) unless
told otherwise. :func:`from_sam` and :func:`to_sam` turn this project's ``Sam`` models (plain or
big.LITTLE) into transformers models and back, by renaming their weights only.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Union

import torch
from segment_anything.modeling import Sam
from transformers import SamModel

from ..assemble import NEW_IN_BIGLITTLE, build_sam_from_config
from ..checkpoint import load_state_dict_strict
from ..config import BigLittleConfig, validate_keep_ratio
from ..modeling import ImageEncoderBigLittle
from ..modeling.vit_config import vit_config
from .configuration import (
    BigLittleSamConfig,
    hf_config_from_sam,
    sam_config_from_hf,
    vision_config_with,
)
from .layout import hf_to_sam_state, hf_vision_to_encoder_state, sam_to_hf_state
from .modeling import BigLittleSamModel, refuse_partial_load

__all__ = ["to_biglittle", "from_sam", "to_sam"]

HFModel = Union[SamModel, BigLittleSamModel]


def _like(model: torch.nn.Module, source: torch.nn.Module) -> Any:
    """``model`` on ``source``'s device, in its dtype and train/eval mode."""
    first = next(source.parameters())
    return model.to(device=first.device, dtype=first.dtype).train(source.training)


def to_biglittle(
    model: Union[SamModel, str, "os.PathLike[str]"],
    keep_ratio: Optional[float] = None,
    training_free: bool = True,
    **biglittle: Any,
) -> BigLittleSamModel:
    """A loaded transformers ``SamModel`` with the big.LITTLE image encoder, keeping its weights.

    Arguments:
      model: a ``SamModel`` (``SamModel.from_pretrained("facebook/sam-vit-base")``, a SlimSAM
        model...), left unchanged (the result shares no tensor with it); or a Hub name or folder,
        loaded with ``SamModel.from_pretrained`` (strictly: a weight it lacks is an error).
      keep_ratio: the share of tokens through SAM's blocks, in (0, 1] (default 0.5).
      training_free: True (default): SAM's blocks alone, routed by a cheap score (no training;
        at keep ratio 1 exactly the input model). False: fresh E-blocks and routers on SAM's
        weights, the start of a distillation (not useful before it).
      biglittle: other big.LITTLE settings (``token_score``, ``skip_rule``, ``little_dim``...; see
        :class:`~biglittle_sam.config.BigLittleConfig`).

    Returns:
      A :class:`BigLittleSamModel` on the input's device, in its dtype and mode.

    Raises:
      ValueError: a keep ratio outside (0, 1], an unknown setting, or a vision config this encoder
        cannot honour (named).
    """
    if isinstance(model, (str, os.PathLike)):
        source = model
        model, info = SamModel.from_pretrained(source, output_loading_info=True)
        refuse_partial_load(info, source)
    if isinstance(model, BigLittleSamModel) or not isinstance(model, SamModel):
        raise TypeError(f"expected a transformers SamModel, got {type(model).__name__}")
    if keep_ratio is not None:
        biglittle["keep_ratio"] = validate_keep_ratio(keep_ratio)
    biglittle["training_free"] = bool(training_free)
    vision_config = vision_config_with(model.config.vision_config, **biglittle)
    vision_config.teacher_checkpoint = model.config.name_or_path or None
    config = BigLittleSamConfig(
        vision_config=vision_config,
        prompt_encoder_config=model.config.prompt_encoder_config.to_dict(),
        mask_decoder_config=model.config.mask_decoder_config.to_dict(),
    )
    swapped = BigLittleSamModel(config)
    state = model.state_dict()
    vision = {
        k[len("vision_encoder.") :]: v for k, v in state.items() if k.startswith("vision_encoder.")
    }
    encoder = swapped.image_encoder
    load_state_dict_strict(
        encoder,
        hf_vision_to_encoder_state(vision),
        "SamModel.vision_encoder",
        encoder.config.name,
        allowed_missing=() if training_free else NEW_IN_BIGLITTLE,
    )
    rest = {k: v for k, v in state.items() if not k.startswith("vision_encoder.")}
    missing, unexpected = swapped.load_state_dict(rest, strict=False)
    leftover = [k for k in missing if not k.startswith("vision_encoder.")]
    if leftover or unexpected:
        raise ValueError(
            f"the SamModel's prompt encoder / mask decoder do not fit: missing {leftover}, "
            f"unexpected {unexpected}"
        )
    return _like(swapped, model)


def from_sam(sam: Sam) -> HFModel:
    """A segment_anything ``Sam`` (plain SAM, or big.LITTLE of this project) as a transformers
    model: ``SamModel``, or :class:`BigLittleSamModel` for a big.LITTLE encoder (its keep ratio,
    mode and teacher kept). Weights are renamed, not changed."""
    encoder = sam.image_encoder
    if isinstance(encoder, ImageEncoderBigLittle):
        config = dataclasses.replace(encoder.config, keep_ratio=encoder.keep_ratio)
    else:
        base = vit_config(encoder)
        # The decoder sizes: the registered config's, or recovered from the modules.
        config = dataclasses.replace(
            base,
            decoder_depth=len(sam.mask_decoder.transformer.layers),
            decoder_mlp_dim=sam.mask_decoder.transformer.layers[0].mlp.lin1.out_features,
            decoder_heads=sam.mask_decoder.transformer.layers[0].self_attn.num_heads,
            iou_head_hidden_dim=sam.mask_decoder.iou_prediction_head.layers[0].out_features,
            mask_in_chans=sam.prompt_encoder.mask_downscaling[3].out_channels,
        )
    hf_config = hf_config_from_sam(config)
    if isinstance(encoder, ImageEncoderBigLittle):
        hf_config.vision_config.teacher_checkpoint = encoder.teacher
    model = (BigLittleSamModel if isinstance(hf_config, BigLittleSamConfig) else SamModel)(
        hf_config
    )
    state = sam_to_hf_state(sam.state_dict(), biglittle=isinstance(encoder, ImageEncoderBigLittle))
    model.load_state_dict(state, strict=True)
    return _like(model, sam)


def to_sam(model: HFModel) -> Sam:
    """A transformers ``SamModel`` / :class:`BigLittleSamModel` as a segment_anything ``Sam``
    (this project's ``ImageEncoderBigLittle`` for a big.LITTLE one), loaded strictly."""
    config = sam_config_from_hf(model.config)
    if isinstance(model, BigLittleSamModel):
        config = dataclasses.replace(config, keep_ratio=model.keep_ratio)
    sam = build_sam_from_config(config)
    state = hf_to_sam_state(model.state_dict())
    load_state_dict_strict(sam, state, type(model).__name__, config.name)
    if isinstance(config, BigLittleConfig):
        tag = getattr(model.config.vision_config, "teacher_checkpoint", None)
        sam.image_encoder.teacher = tag or config.teacher
    return _like(sam, model)

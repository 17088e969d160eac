"""Merge a distilled big.LITTLE image encoder with SAM's prompt encoder and mask decoder.

The result is one checkpoint in SAM's key layout (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``), wrapped with its config and teacher, which
``sam_model_registry[name](checkpoint=...)`` loads strictly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .build_sam import (
    build_sam_from_config,
    inherit_from_sam,
    read_sam_checkpoint,
    sam_model_registry,
)
from .checkpoint import (
    CheckpointError,
    checkpoint_config,
    load_state_dict_strict,
    read_checkpoint,
    save_model_checkpoint,
    split_checkpoint,
    tensor_elements,
)
from .config import BIGLITTLE_CONFIGS, BigLittleConfig

__all__ = ["convert_checkpoint", "encoder_state_dict"]

PathLike = Union[str, os.PathLike]


def encoder_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The image-encoder part of a state dict, without the ``image_encoder.`` prefix.

    Accepts an encoder-only state dict (``patch_embed.*``, ``blocks.*``, ``neck.*``) or a whole-
    model one (``image_encoder.*`` plus the rest, which is dropped).
    """
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def convert_checkpoint(
    encoder: PathLike,
    sam_checkpoint: PathLike,
    output: PathLike,
    model: Optional[str] = None,
    teacher: Optional[str] = None,
) -> Path:
    """Write ``output``: the encoder of ``encoder`` plus everything else from ``sam_checkpoint``.

    Arguments:
      encoder: a big.LITTLE encoder checkpoint (encoder-only or whole-model state dict, optionally
        with ``config`` and ``teacher`` metadata, as distillation writes).
      sam_checkpoint: the official SAM checkpoint whose prompt encoder and mask decoder to use.
      output: where to write the merged checkpoint (atomically).
      model: registry name (``bl_b``...); required when ``encoder`` stores no config.
      teacher: teacher tag to record; default: the encoder file's, else derived from
      ``sam_checkpoint``.

    Returns:
      The written path, after a strict reload through ``sam_model_registry`` succeeded.
    """
    state, meta = split_checkpoint(read_checkpoint(encoder), encoder)
    enc_state = encoder_state_dict(state)
    sam_state, _ = read_sam_checkpoint(sam_checkpoint)
    config: BigLittleConfig
    # The stored config is validated, and its size bounded by the tensors of both files, before
    # any model is built.
    loaded = checkpoint_config(meta, enc_state, encoder, tensor_elements(sam_state))
    if loaded is not None:
        if not isinstance(loaded, BigLittleConfig):
            raise CheckpointError(f"{encoder}: stores a plain SAM config ('{loaded.name}')")
        if model is not None and loaded.name != model:
            raise CheckpointError(f"{encoder}: is a '{loaded.name}' encoder, not '{model}'")
        config = loaded
    elif model is None:
        raise ValueError(f"{encoder}: stores no config; pass the model name (bl_b, bl_l, ...)")
    elif model not in BIGLITTLE_CONFIGS:
        raise ValueError(f"unknown big.LITTLE model {model!r}; one of {sorted(BIGLITTLE_CONFIGS)}")
    else:
        config = BIGLITTLE_CONFIGS[model]
    sam = build_sam_from_config(config)
    derived = inherit_from_sam(sam, sam_checkpoint, sam_state)
    load_state_dict_strict(sam.image_encoder, enc_state, encoder, f"{config.name} image encoder")
    tag = teacher or (meta.get("teacher") if isinstance(meta.get("teacher"), str) else None)
    out = save_model_checkpoint(output, sam, config, teacher=tag or derived)
    # The promise made to the user: the file loads strictly through the registry.
    sam_model_registry[config.name](checkpoint=out)
    return out

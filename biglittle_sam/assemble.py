"""Building a ``Sam`` from a config, and giving a big.LITTLE one an official SAM file's weights.

:func:`build_sam_from_config` is the one place a config becomes modules (the registry's builders in
``build_sam`` choose the config and the weights); :func:`inherit_from_sam` loads every SAM weight
of an official file into a big.LITTLE model, strictly, leaving only what SAM does not have (E-blocks
and routers) fresh.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, Optional

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from .checkpoint import PathLike, load_state_dict_strict
from .config import BigLittleConfig, SamViTConfig
from .model_files import check_inheritable, read_sam_checkpoint
from .modeling import ImageEncoderBigLittle

__all__ = [
    "build_sam_from_config",
    "inherit_from_sam",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "NEW_IN_BIGLITTLE",
]

StateDict = Dict[str, torch.Tensor]
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's ImageNet normalization, in 0..255
PIXEL_STD = (58.395, 57.12, 57.375)
# Keys of a big.LITTLE model that a plain SAM checkpoint cannot provide: they start fresh.
NEW_IN_BIGLITTLE = (".little.", ".router.", ".context.")


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


def inherit_from_sam(sam: Sam, sam_checkpoint: PathLike, state: Optional[StateDict] = None) -> str:
    """Load an official SAM checkpoint into a big.LITTLE ``Sam``: every SAM weight, strictly.

    The patch and position embeddings, the P-blocks, the neck, the prompt encoder and the mask
    decoder come from the file; E-blocks (gamma 0) and routers keep their fresh values (a
    training-free model has neither: it then holds exactly the file's weights). ``state`` is the
    file's state dict when the caller has read it already. Returns the teacher tag recorded in
    checkpoints, ``"<sam name>:<file name>"``.

    Raises:
      CheckpointError: the file is a big.LITTLE checkpoint, or SAM of another size (naming both).
    """
    encoder = sam.image_encoder
    if not isinstance(encoder, ImageEncoderBigLittle):
        raise TypeError(f"expected a big.LITTLE SAM model, got encoder {type(encoder).__name__}")
    config = encoder.config
    sam_state = state if state is not None else read_sam_checkpoint(sam_checkpoint)[0]
    check_inheritable(config, sam_state, sam_checkpoint)
    load_state_dict_strict(
        sam, sam_state, sam_checkpoint, config.name, allowed_missing=NEW_IN_BIGLITTLE
    )
    return f"{config.teacher}:{Path(sam_checkpoint).name}"

"""Model components. This module is the only import surface of ``biglittle_sam.modeling``."""

from .attention import Attention, resize_rel_pos, window_partition, window_unpartition
from .blocks import BigBlock, BigLittleBlock, LayerRouting
from .encoder_ops import (
    get_keep_ratio,
    keep_ratio_context,
    model_config,
    set_keep_ratio,
    swap_image_encoder,
)
from .global_context import NearestContext, PooledContext, old_layout_missing
from .image_encoder import BigLittleAux, ImageEncoderBigLittle, ImageEncoderViTFused
from .little_block import LittleBlock
from .router import Router, select_tokens
from .training_free import TrainingFreeBlock

__all__ = [
    "Attention",
    "BigBlock",
    "BigLittleAux",
    "BigLittleBlock",
    "ImageEncoderBigLittle",
    "ImageEncoderViTFused",
    "LayerRouting",
    "LittleBlock",
    "NearestContext",
    "PooledContext",
    "Router",
    "TrainingFreeBlock",
    "get_keep_ratio",
    "keep_ratio_context",
    "model_config",
    "old_layout_missing",
    "resize_rel_pos",
    "select_tokens",
    "set_keep_ratio",
    "swap_image_encoder",
    "window_partition",
    "window_unpartition",
]

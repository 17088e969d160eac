"""Model components. This module is the only import surface of ``biglittle_sam.modeling``."""

from .attention import Attention, resize_rel_pos, window_partition, window_unpartition
from .blocks import BigBlock, BigLittleBlock, LayerRouting, LittleBlock
from .image_encoder import BigLittleAux, ImageEncoderBigLittle, ImageEncoderViTFused
from .router import Router, select_tokens

__all__ = [
    "Attention",
    "BigBlock",
    "BigLittleAux",
    "BigLittleBlock",
    "ImageEncoderBigLittle",
    "ImageEncoderViTFused",
    "LayerRouting",
    "LittleBlock",
    "Router",
    "resize_rel_pos",
    "select_tokens",
    "window_partition",
    "window_unpartition",
]

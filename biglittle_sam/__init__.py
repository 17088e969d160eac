"""biglittle-sam: Segment Anything with a big.LITTLE image encoder, a drop-in for segment_anything.

    from biglittle_sam import sam_model_registry
    from segment_anything import SamPredictor

    sam = sam_model_registry["bl_b"](sam_checkpoint="sam_vit_b_01ec64.pth", keep_ratio=0.25)
    predictor = SamPredictor(sam)
"""

from .build_sam import (
    build_sam_from_config,
    get_keep_ratio,
    keep_ratio_context,
    model_config,
    sam_model_registry,
    set_keep_ratio,
    swap_image_encoder,
)
from .checkpoint import CheckpointError, read_checkpoint, save_model_checkpoint
from .config import BIGLITTLE_CONFIGS, SAM_CONFIGS, BigLittleConfig, SamViTConfig, get_config
from .modeling import BigLittleAux, ImageEncoderBigLittle

__version__ = "0.1.0"

__all__ = [
    "BIGLITTLE_CONFIGS",
    "SAM_CONFIGS",
    "BigLittleAux",
    "BigLittleConfig",
    "CheckpointError",
    "ImageEncoderBigLittle",
    "SamViTConfig",
    "build_sam_from_config",
    "get_config",
    "get_keep_ratio",
    "keep_ratio_context",
    "model_config",
    "read_checkpoint",
    "sam_model_registry",
    "save_model_checkpoint",
    "set_keep_ratio",
    "swap_image_encoder",
]

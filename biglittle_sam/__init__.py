"""biglittle-sam: Segment Anything with a big.LITTLE image encoder, a drop-in for segment_anything.

    from biglittle_sam import sam_model_registry, SamPredictor

    sam = sam_model_registry["bl_b"](sam_checkpoint="sam_vit_b_01ec64.pth", keep_ratio=0.5)
    predictor = SamPredictor(sam)

Official SAM weights alone run in the training-free mode (no training, see ``build_sam``);
``register_with_segment_anything()`` makes ``segment_anything.sam_model_registry["bl_b"]`` work
for pipelines that take a model-type string and a checkpoint path.

``SamPredictor`` and ``SamAutomaticMaskGenerator`` are segment_anything's own, re-exported so the
swap is one import; ``BatchedSamPredictor`` is this project's predictor for many prompts at once,
and ``FastAutomaticMaskGenerator`` gives ``SamAutomaticMaskGenerator``'s masks with a cheaper point
loop.
"""

from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from .build_sam import (
    build_sam_from_config,
    get_keep_ratio,
    keep_ratio_context,
    load_sam,
    model_config,
    register_with_segment_anything,
    sam_model_registry,
    set_keep_ratio,
    swap_image_encoder,
)
from .checkpoint import CheckpointError, read_checkpoint, save_model_checkpoint
from .config import BIGLITTLE_CONFIGS, SAM_CONFIGS, BigLittleConfig, SamViTConfig, get_config
from .mask_generator import FastAutomaticMaskGenerator
from .modeling import BigLittleAux, ImageEncoderBigLittle
from .predictor import BatchedSamPredictor
from .runtime.transformers_hook import install as _install_transformers_hook

__version__ = "0.1.0"

# transformers users: AutoModel / pipeline("mask-generation") know "biglittle_sam" folders once
# transformers is imported (nothing is imported here for users without it; see biglittle_sam.hf).
_install_transformers_hook()

__all__ = [
    "BIGLITTLE_CONFIGS",
    "SAM_CONFIGS",
    "BatchedSamPredictor",
    "BigLittleAux",
    "BigLittleConfig",
    "CheckpointError",
    "FastAutomaticMaskGenerator",
    "ImageEncoderBigLittle",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "SamViTConfig",
    "build_sam_from_config",
    "get_config",
    "get_keep_ratio",
    "keep_ratio_context",
    "load_sam",
    "model_config",
    "read_checkpoint",
    "register_with_segment_anything",
    "sam_model_registry",
    "save_model_checkpoint",
    "set_keep_ratio",
    "swap_image_encoder",
]

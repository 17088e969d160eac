"""big.LITTLE SAM for transformers users (needs ``pip install biglittle-sam[hf]``).

    from transformers import SamModel, SamProcessor
    import biglittle_sam.hf as blhf

    model = blhf.to_biglittle(SamModel.from_pretrained("facebook/sam-vit-base"), keep_ratio=0.5)
    model.save_pretrained("sam-vit-base-bl")   # AutoModel / pipeline("mask-generation") load it

Importing this module registers the ``"biglittle_sam"`` model type with transformers' auto
classes; ``import biglittle_sam`` does so too, as soon as transformers is imported.
"""

import transformers as _transformers

if int(_transformers.__version__.split(".")[0]) < 5:  # pragma: no cover - environment
    raise ImportError(
        f"biglittle_sam.hf needs transformers 5 or newer, found {_transformers.__version__}: "
        "pip install 'biglittle-sam[hf]'"
    )

from .configuration import (  # noqa: E402
    BigLittleSamConfig,
    BigLittleSamVisionConfig,
    biglittle_config_from_hf,
    hf_config_from_sam,
    sam_config_from_hf,
)
from .convert import convert_from_hf, convert_to_hf, from_checkpoint, processor_for
from .layout import LayoutError, hf_to_sam_state, sam_to_hf_state
from .modeling import BigLittleSamModel, BigLittleSamVisionEncoder, register
from .sam3_config import BigLittleSam3ViTConfig
from .sam3_model import BigLittleSam3ViTModel, register_sam3
from .sam3_swap import load_sam3, sam3_keep_ratio_context, set_sam3_keep_ratio, to_biglittle_sam3
from .swap import from_sam, to_biglittle, to_sam

register()
register_sam3()

__all__ = [
    "BigLittleSam3ViTConfig",
    "BigLittleSam3ViTModel",
    "BigLittleSamConfig",
    "BigLittleSamModel",
    "BigLittleSamVisionConfig",
    "BigLittleSamVisionEncoder",
    "LayoutError",
    "biglittle_config_from_hf",
    "convert_from_hf",
    "convert_to_hf",
    "from_checkpoint",
    "from_sam",
    "hf_config_from_sam",
    "hf_to_sam_state",
    "load_sam3",
    "processor_for",
    "register",
    "register_sam3",
    "sam_config_from_hf",
    "sam3_keep_ratio_context",
    "sam_to_hf_state",
    "set_sam3_keep_ratio",
    "to_biglittle",
    "to_biglittle_sam3",
    "to_sam",
]

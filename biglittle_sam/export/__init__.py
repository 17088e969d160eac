"""Export to ONNX: the image encoder at a fixed keep ratio and the prompt encoder + mask decoder.

Needs the ``export`` extra: ``pip install "biglittle-sam[export]"``; ``onnx`` and ``onnxruntime``
are imported only when a function needs them.
"""

from .onnx import (
    DEFAULT_OPSET,
    MIN_OPSET,
    OnnxImageEncoder,
    compare_image_encoder,
    compare_prompt_decoder,
    export_image_encoder,
    export_prompt_decoder,
    max_opset,
    read_metadata,
    validate_opset,
)

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "OnnxImageEncoder",
    "compare_image_encoder",
    "compare_prompt_decoder",
    "export_image_encoder",
    "export_prompt_decoder",
    "max_opset",
    "read_metadata",
    "validate_opset",
]

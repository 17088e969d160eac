"""Export to ONNX: the image encoder at a fixed keep ratio and the prompt encoder + mask decoder.

Needs the ``export`` extra: ``pip install "biglittle-sam[export]"``; ``onnx`` and ``onnxruntime``
are imported only when a function needs them.
"""

from .onnx import (
    DEFAULT_OPSET,
    FP32_TOLERANCE,
    INT8_MIN_COSINE,
    MIN_OPSET,
    Comparison,
    OnnxImageEncoder,
    check_image_encoder,
    check_prompt_decoder,
    compare_image_encoder,
    compare_prompt_decoder,
    export_backbone,
    export_image_encoder,
    export_prompt_decoder,
    gelu_approximation,
    max_opset,
    quantize_onnx,
    read_metadata,
    validate_opset,
)

__all__ = [
    "DEFAULT_OPSET",
    "FP32_TOLERANCE",
    "INT8_MIN_COSINE",
    "MIN_OPSET",
    "Comparison",
    "OnnxImageEncoder",
    "check_image_encoder",
    "check_prompt_decoder",
    "compare_image_encoder",
    "compare_prompt_decoder",
    "export_backbone",
    "export_image_encoder",
    "export_prompt_decoder",
    "gelu_approximation",
    "max_opset",
    "quantize_onnx",
    "read_metadata",
    "validate_opset",
]

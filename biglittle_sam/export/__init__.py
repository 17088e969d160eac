"""Export to ONNX: the image encoder at a fixed keep ratio and the prompt encoder + mask decoder.

The two files form a pair, as in ``segment_anything``'s ONNX example. One module a job:

- :mod:`.encoder`: ``export_image_encoder`` (and ``export_backbone``, for a peer's backbone);
- :mod:`.decoder`: ``export_prompt_decoder``, through upstream's ``SamOnnxModel``;
- :mod:`.check`: onnxruntime sessions, ``OnnxImageEncoder``, and the checks against PyTorch;
- :mod:`.int8`: ``quantize_onnx``, a dynamic int8 copy of either file;
- :mod:`.onnx_file`: what they share (opsets, the TorchScript export, metadata);
- :mod:`.profile`: time per operator type of an exported encoder in onnxruntime;
- :mod:`.settings`: ``ExportSettings``, the flags of ``biglittle-sam-export-onnx``.

Needs the ``export`` extra: ``pip install "biglittle-sam[export]"``; ``onnx`` and ``onnxruntime``
are imported only when a function needs them.
"""

from .check import (
    FP32_TOLERANCE,
    INT8_MIN_COSINE,
    Comparison,
    OnnxImageEncoder,
    check_image_encoder,
    check_prompt_decoder,
    compare_image_encoder,
    compare_prompt_decoder,
)
from .decoder import export_prompt_decoder
from .encoder import export_backbone, export_image_encoder
from .int8 import quantize_onnx
from .onnx_file import (
    DEFAULT_OPSET,
    MIN_OPSET,
    gelu_approximation,
    max_opset,
    read_metadata,
    validate_opset,
)
from .settings import ExportSettings

__all__ = [
    "DEFAULT_OPSET",
    "FP32_TOLERANCE",
    "INT8_MIN_COSINE",
    "MIN_OPSET",
    "Comparison",
    "ExportSettings",
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

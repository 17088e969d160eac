"""The settings of one ``biglittle-sam-export-onnx`` run, from which the tool builds its flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..model_spec import SPEC_FORM, ModelSpec, model_spec_arg
from ..runtime.cli import flag
from .check import FP32_TOLERANCE, INT8_MIN_COSINE
from .int8 import QUANT_WEIGHT_TYPES
from .onnx_file import DEFAULT_OPSET

__all__ = ["ExportSettings"]


@dataclass(frozen=True)
class ExportSettings:
    """Which model to export, how (the decoder options are upstream's
    ``scripts/export_onnx_model.py``'s, with its defaults), and whether to check the files.

    The files are ``<out_dir>/<name>_r<ratio>_encoder.onnx`` and ``<out_dir>/<name>_decoder.onnx``,
    with ``..._int8.onnx`` copies under ``quantize_out``.
    """

    model: ModelSpec = flag(
        help=f"the model: {SPEC_FORM}; --checkpoint and --keep-ratio may give those parts",
        required=True,
        type=model_spec_arg,
        metavar="SPEC",
    )
    checkpoint: Optional[str] = None  # a checkpoint of that model (default: none, random weights)
    sam_checkpoint: Optional[str] = flag(
        None, "for bl_*: an official SAM checkpoint to inherit from (not distilled; default: none)"
    )
    seed: int = 0  # seed of the weights no checkpoint provides
    keep_ratio: Optional[float] = None  # big.LITTLE keep ratio in (0, 1] (default: the model's)
    opset: int = DEFAULT_OPSET  # ONNX opset
    out_dir: str = "."  # output folder (default: current)
    skip_decoder: bool = False  # export only the image encoder (default: both)
    return_single_mask: bool = flag(
        False, "decoder returns only the best mask instead of all 4 (default: all 4, as upstream)"
    )
    use_stability_score: bool = flag(
        False,
        "decoder's iou_predictions are the masks' stability scores (offset 1.0) instead of the "
        "predicted IoU",
    )
    return_extra_metrics: bool = False  # decoder also returns the masks' stability_scores and areas
    gelu_approximate: bool = flag(
        False,
        "export GELU as its tanh approximation, for runtimes with a slow or missing Erf "
        "(default: exact)",
    )
    quantize_out: bool = flag(
        False,
        "also write a dynamic 8-bit copy of each file (onnxruntime quantize_dynamic) as "
        "<name>_int8.onnx beside it",
    )
    quantize_weight_type: str = flag(
        "int8", "weight type of --quantize-out; upstream uses uint8", choices=QUANT_WEIGHT_TYPES
    )
    check: bool = flag(
        False,
        "run every exported file in onnxruntime against PyTorch; exit 1 when an fp32 file is "
        f"beyond --check-tolerance or an int8 file below cosine {INT8_MIN_COSINE}",
    )
    check_tolerance: float = FP32_TOLERANCE  # --check's largest max abs difference for fp32 files

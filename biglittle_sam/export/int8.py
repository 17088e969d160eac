"""Dynamic int8 copies of exported files (onnxruntime ``quantize_dynamic``, as upstream's
``--quantize-out``), for CPU inference."""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path

from ..fileio import atomic_open
from .onnx_file import PathLike, _require, _set_metadata, _temp_beside, read_metadata

__all__ = ["QUANT_WEIGHT_TYPES", "quantize_onnx"]

QUANT_WEIGHT_TYPES = ("int8", "uint8")


def quantize_onnx(src: PathLike, dst: PathLike, weight_type: str = "int8") -> Path:
    """Dynamic 8-bit quantization of an exported file's matrix products, for CPU inference.

    Upstream's ``--quantize-out``: onnxruntime ``quantize_dynamic`` (weights quantized once,
    activations per run). Upstream quantizes weights to ``uint8``; ``int8`` is onnxruntime's
    default and the form its x86 kernels prefer.

    Arguments:
      src: an fp32 file from :func:`export_image_encoder` or :func:`export_prompt_decoder`.
      dst: the quantized file to write (atomically); its metadata is the source's plus
        ``quantized``.
      weight_type: ``int8`` or ``uint8``.

    Returns:
      ``dst`` as a ``Path``.

    Raises:
      ValueError: an unknown weight type, or ``src`` and ``dst`` are the same file.
      FileNotFoundError: ``src`` does not exist.
      ImportError: ``onnx`` or ``onnxruntime`` is not installed.
    """
    if weight_type not in QUANT_WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {QUANT_WEIGHT_TYPES}, got {weight_type!r}")
    source, target = Path(src), Path(dst)
    if not source.is_file():
        raise FileNotFoundError(f"ONNX model {source} not found")
    if source.resolve() == target.resolve():
        raise ValueError(f"the quantized file must not replace its source {source}")
    onnx = _require("onnx")
    _require("onnxruntime")
    quantization = importlib.import_module("onnxruntime.quantization")
    qtype = quantization.QuantType.QInt8 if weight_type == "int8" else quantization.QuantType.QUInt8
    with _temp_beside(target, ".quant.onnx") as tmp:
        # The quantizer logs a warning per tensor whose type it cannot infer (shape-only tensors
        # such as the router's indices, which it leaves in fp32 / int64 anyway).
        disabled = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantization.quantize_dynamic(str(source), tmp, weight_type=qtype)
        finally:
            logging.disable(disabled)
        proto = onnx.load(tmp)
        metadata = {p.key: p.value for p in proto.metadata_props}
        metadata.update(read_metadata(source))
        metadata["quantized"] = f"dynamic {weight_type} (onnxruntime quantize_dynamic)"
        _set_metadata(proto, metadata)
        with atomic_open(target, "wb") as f:
            f.write(proto.SerializeToString())
    return target

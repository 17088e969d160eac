"""Export an image encoder at a fixed keep ratio, or any image backbone, to ONNX.

``export_image_encoder`` writes the encoder. Input ``image``: B x 3 x S x S float32, normalized and
padded exactly as ``Sam.preprocess`` does (S = ``img_size``, 1024 for the full-size models).
Output ``image_embeddings``: B x out_chans x S/16 x S/16. The batch dimension is dynamic. A
big.LITTLE encoder is exported at one keep ratio: capacity is ``ceil(r * group)`` tokens per group,
fixed by the ratio, so the top-k, gather and scatter have static shapes and the graph holds no
data-dependent shape. Another ratio needs another file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch
from segment_anything.modeling import ImageEncoderViT, Sam
from torch import nn

from ..config import validate_keep_ratio
from ..modeling import ImageEncoderBigLittle, ImageEncoderViTFused, keep_ratio_context, model_config
from .onnx_file import DEFAULT_OPSET, PathLike, _torch_export, gelu_approximation, validate_opset

__all__ = ["ENCODER_INPUT", "ENCODER_OUTPUT", "export_backbone", "export_image_encoder"]

ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
_ENCODERS = (ImageEncoderBigLittle, ImageEncoderViTFused, ImageEncoderViT)


def _split_model(model: Any) -> Tuple[nn.Module, Optional[Sam]]:
    """(image encoder, the Sam around it or None), or ValueError for anything else."""
    if isinstance(model, Sam):
        encoder, sam = model.image_encoder, model
    else:
        encoder, sam = model, None
    if not isinstance(encoder, _ENCODERS):
        names = ", ".join(c.__name__ for c in _ENCODERS)
        raise ValueError(
            f"expected a segment_anything Sam (from sam_model_registry) or an image encoder "
            f"({names}), got {type(encoder).__name__}"
        )
    return encoder, sam


def _model_name(encoder: nn.Module) -> str:
    """The encoder's registry name, as its config records it."""
    return str(model_config(encoder).name)


@contextlib.contextmanager
def _export_state(encoder: nn.Module, keep_ratio: Optional[float]) -> Iterator[None]:
    """Eval mode and the export keep ratio for the duration of an export, restored afterwards.

    The ratio is this thread's (``keep_ratio_context``), so the encoder's own is never changed.
    """
    was_training = encoder.training
    ratio = (
        keep_ratio_context(encoder, keep_ratio)
        if keep_ratio is not None and isinstance(encoder, ImageEncoderBigLittle)
        else contextlib.nullcontext()
    )
    try:
        encoder.eval()
        with ratio:
            yield
    finally:
        encoder.train(was_training)


def _export_image_graph(
    module: nn.Module, size: int, path: PathLike, opset: int, metadata: Dict[str, str]
) -> Path:
    """Export ``module`` as ``image`` (B x 3 x S x S) -> ``image_embeddings``, B dynamic."""
    param = next(module.parameters())
    # Traced at batch 2, so no reshape can fold the batch size into a constant.
    dummy = torch.randn(2, 3, size, size, device=param.device, dtype=param.dtype)
    return _torch_export(
        module,
        (dummy,),
        path,
        opset,
        (ENCODER_INPUT,),
        (ENCODER_OUTPUT,),
        {ENCODER_INPUT: {0: "batch"}, ENCODER_OUTPUT: {0: "batch"}},
        metadata,
    )


def export_image_encoder(
    model: Union[Sam, nn.Module],
    path: PathLike,
    keep_ratio: Optional[float] = None,
    opset: int = DEFAULT_OPSET,
    img_size: Optional[int] = None,
    gelu_approximate: bool = False,
) -> Path:
    """Export an image encoder to ONNX at a fixed keep ratio.

    Arguments:
      model: a ``Sam`` (from ``sam_model_registry``) or its image encoder: big.LITTLE
        (``ImageEncoderBigLittle``), ``ImageEncoderViTFused`` or ``segment_anything``'s
        ``ImageEncoderViT``. It is left as it was (mode and keep ratio are restored).
      path: the ``.onnx`` file to write (atomically: a failed export leaves no file).
      keep_ratio: in (0, 1]; None exports a big.LITTLE encoder at its current keep ratio. A plain
        SAM encoder only takes None or 1.
      opset: ONNX opset, ``MIN_OPSET`` to :func:`max_opset`.
      img_size: side S of the input; the position embedding fixes it to the encoder's
        ``img_size``, so this is a check (None takes the encoder's).
      gelu_approximate: export every GELU as its tanh approximation (upstream's
        ``--gelu-approximate``; the model itself is left exact).

    The graph maps ``image`` (B x 3 x S x S float32, normalized and padded as ``Sam.preprocess``
    does) to ``image_embeddings`` (B x out_chans x S/16 x S/16); B is dynamic. The model's
    ``metadata_props`` record the model name, keep ratio, img_size and teacher.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      ValueError: a keep ratio outside (0, 1] or below 1 for plain SAM, an opset out of range, an
        img_size that is not the encoder's, or a model that is not a SAM or image encoder.
      ImportError: ``onnx`` is not installed.
    """
    encoder, sam = _split_model(model)
    big_little = isinstance(encoder, ImageEncoderBigLittle)
    if keep_ratio is not None:
        plain_sam = None if big_little else type(encoder).__name__
        keep_ratio = validate_keep_ratio(keep_ratio, plain_sam=plain_sam)
    opset = validate_opset(opset)
    size = int(encoder.img_size)
    if img_size is not None and img_size != size:
        raise ValueError(
            f"img_size must be the encoder's img_size {size} (its position embedding is fixed to "
            f"it), got {img_size!r}"
        )
    ratio = (keep_ratio if keep_ratio is not None else encoder.keep_ratio) if big_little else 1.0
    metadata = {
        "producer": "biglittle_sam",
        "kind": "image_encoder",
        "model_name": _model_name(encoder),
        "encoder_class": type(encoder).__name__,
        "keep_ratio": repr(float(ratio)),
        "img_size": str(size),
        "teacher": str(getattr(encoder, "teacher", "") or ""),
        "gelu_approximate": str(bool(gelu_approximate)),
        "input": f"{ENCODER_INPUT}: B x 3 x {size} x {size} float32, as Sam.preprocess",
        "output": f"{ENCODER_OUTPUT}: B x out_chans x {size // 16} x {size // 16}",
    }
    if sam is not None:
        metadata["pixel_mean"] = ",".join(f"{v:g}" for v in sam.pixel_mean.flatten().tolist())
        metadata["pixel_std"] = ",".join(f"{v:g}" for v in sam.pixel_std.flatten().tolist())
    with _export_state(encoder, keep_ratio), gelu_approximation(encoder, gelu_approximate):
        return _export_image_graph(encoder, size, path, opset, metadata)


def export_backbone(
    module: nn.Module, path: PathLike, img_size: int, opset: int = DEFAULT_OPSET, name: str = ""
) -> Path:
    """Export any image backbone (a peer's, such as a timm model) for timing in onnxruntime.

    The graph maps ``image`` (B x 3 x S x S float32) to ``image_embeddings`` (whatever the module
    returns for it: B x C x h x w features for the timm peers); B is dynamic. The metadata says
    ``kind=backbone``, so the file opens in :class:`OnnxImageEncoder` like an encoder export.

    Arguments:
      module: maps B x 3 x S x S to one feature tensor.
      path: the ``.onnx`` file to write (atomically).
      img_size: the side S the module is exported (and timed) at.
      opset: ONNX opset, ``MIN_OPSET`` to :func:`max_opset`.
      name: recorded as ``model_name`` (default: the module's class name).

    Raises:
      ValueError: an opset out of range or an img_size that is not a positive integer.
      ImportError: ``onnx`` is not installed.
    """
    opset = validate_opset(opset)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
    metadata = {
        "producer": "biglittle_sam",
        "kind": "backbone",
        "model_name": name or type(module).__name__,
        "img_size": str(img_size),
        "input": f"{ENCODER_INPUT}: B x 3 x {img_size} x {img_size} float32",
        "output": f"{ENCODER_OUTPUT}: the backbone's features",
    }
    training = module.training
    module.eval()
    try:
        return _export_image_graph(module, img_size, path, opset, metadata)
    finally:
        module.train(training)

"""ONNX export: the image encoder at a fixed keep ratio, and SAM's prompt encoder + mask decoder.

The two files form a pair, as in ``segment_anything``'s ONNX example:

- ``export_image_encoder`` writes the encoder. Input ``image``: B x 3 x S x S float32, normalized
  and padded exactly as ``Sam.preprocess`` does (S = ``img_size``, 1024 for the full-size models).
  Output ``image_embeddings``: B x out_chans x S/16 x S/16. The batch dimension is dynamic. A
  big.LITTLE encoder is exported at one keep ratio: capacity is ``ceil(r * group)`` tokens per
  group, fixed by the ratio, so the top-k, gather and scatter have static shapes and the graph
  holds no data-dependent shape. Another ratio needs another file.
- ``export_prompt_decoder`` writes the prompt encoder and mask decoder through upstream
  ``segment_anything.utils.onnx.SamOnnxModel``, with the input names, options and defaults of
  ``segment_anything``'s ``scripts/export_onnx_model.py`` (all masks unless
  ``return_single_mask``), and a dynamic prompt dimension: K boxes or point sets against one
  image's embedding in one call, as ``SamPredictor.predict_torch`` takes them.
- ``quantize_onnx`` writes a dynamic int8 copy of either file (onnxruntime ``quantize_dynamic``,
  as upstream's ``--quantize-out``); ``check_image_encoder`` / ``check_prompt_decoder`` measure a
  file against PyTorch (max abs difference and cosine similarity) for ``--check``.

Both go through PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). The
dynamo exporter cannot yet decompose the encoder's fused attention path (see docs/export.md).
``onnx`` and ``onnxruntime`` are imported only when needed: ``pip install "biglittle-sam[export]"``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import numbers
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from segment_anything.modeling import ImageEncoderViT, Sam
from torch import Tensor, nn

from ..config import validate_keep_ratio
from ..fileio import atomic_open
from ..modeling import ImageEncoderBigLittle, ImageEncoderViTFused, keep_ratio_context, model_config

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "FP32_TOLERANCE",
    "INT8_MIN_COSINE",
    "Comparison",
    "OnnxImageEncoder",
    "encoder_input_size",
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

PathLike = Union[str, os.PathLike]
INSTALL_HINT = 'pip install "biglittle-sam[export]"'
DEFAULT_OPSET = 17  # segment_anything's export script default; every onnxruntime since 1.14 runs it
# scaled_dot_product_attention (the encoders' fused attention) has an ONNX export from opset 14 on.
MIN_OPSET = 14
# The TorchScript exporter's ceiling when torch does not say (torch 2.1 to 2.14: 17 to 20).
_FALLBACK_MAX_OPSET = 17
ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# With return_extra_metrics, SamOnnxModel returns these, in this order.
DECODER_EXTRA_OUTPUTS = ("masks", "iou_predictions", "stability_scores", "areas", "low_res_masks")
# --check: an fp32 file passes when every output is within this max abs difference of PyTorch.
FP32_TOLERANCE = 1e-3
# --check: an int8 file (quantize_onnx) passes when every output keeps this cosine similarity to
# fp32 PyTorch (the embedding-fidelity bar of the int8 work).
INT8_MIN_COSINE = 0.99
QUANT_WEIGHT_TYPES = ("int8", "uint8")
_ENCODERS = (ImageEncoderBigLittle, ImageEncoderViTFused, ImageEncoderViT)


def _require(module: str) -> ModuleType:
    """Import an optional export dependency, or raise an ImportError that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export needs the '{module}' package: {INSTALL_HINT}") from None


def max_opset() -> int:
    """The highest opset both torch's TorchScript exporter and the installed ``onnx`` support."""
    constants = importlib.import_module("torch.onnx._constants")
    torch_max = int(getattr(constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _FALLBACK_MAX_OPSET))
    onnx = _require("onnx")
    return min(torch_max, int(onnx.defs.onnx_opset_version()))


def validate_opset(opset: Any) -> int:
    """Return ``opset`` as an int, or raise ``ValueError`` unless ``MIN_OPSET <= opset <= max``."""
    top = max_opset()
    expected = f"an integer from {MIN_OPSET} to {top}"
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise ValueError(f"opset must be {expected}, got {opset!r}")
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old: the encoder's scaled_dot_product_attention exports from "
            f"opset {MIN_OPSET} on; expected {expected}"
        )
    if opset > top:
        raise ValueError(
            f"opset {opset} is newer than torch's TorchScript ONNX exporter and the installed onnx "
            f"support; expected {expected}"
        )
    return int(opset)


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


@contextlib.contextmanager
def gelu_approximation(module: nn.Module, approximate: bool = True) -> Iterator[None]:
    """Every ``nn.GELU`` in ``module`` uses the tanh approximation for the duration, then its own.

    Upstream's ``--gelu-approximate``: for runtimes with a slow or missing ``Erf``. A no-op when
    ``approximate`` is False.
    """
    gelus = [m for m in module.modules() if isinstance(m, nn.GELU)] if approximate else []
    old = [m.approximate for m in gelus]
    try:
        for m in gelus:
            m.approximate = "tanh"
        yield
    finally:
        for m, value in zip(gelus, old):
            m.approximate = value


@contextlib.contextmanager
def _temp_beside(target: Path, suffix: str) -> Iterator[str]:
    """A temporary file name in ``target``'s folder (created there), removed afterwards."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _set_metadata(proto: Any, metadata: Dict[str, str]) -> None:
    """Replace an ONNX ``ModelProto``'s ``metadata_props`` with ``metadata``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _materialize_shared_weights(proto: Any) -> int:
    """Give every weight that the exporter shared through an ``Identity`` node its own copy.

    The exporter stores equal parameters once and feeds the others through ``Identity`` nodes
    (it happens with random weights: a zero-initialised BatchNorm makes the folded weights of
    several convolutions equal). onnxruntime's quantizer needs each Conv / MatMul weight to be an
    initializer, so the ``Identity`` nodes whose input is an initializer are replaced by copies.

    Returns:
      the number of ``Identity`` nodes replaced.
    """
    initializers = {t.name: t for t in proto.graph.initializer}
    replaced = [
        n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in initializers
    ]
    for node in replaced:
        copy = proto.graph.initializer.add()
        copy.CopyFrom(initializers[node.input[0]])
        copy.name = node.output[0]
        proto.graph.node.remove(node)
    return len(replaced)


def _torch_export(
    module: nn.Module,
    args: Tuple[Tensor, ...],
    path: PathLike,
    opset: int,
    input_names: Tuple[str, ...],
    output_names: Tuple[str, ...],
    dynamic_axes: Dict[str, Dict[int, str]],
    metadata: Dict[str, str],
) -> Path:
    """Export through the TorchScript exporter into a temporary file, add metadata, then atomically
    replace ``path``."""
    onnx = _require("onnx")
    target = Path(path)
    with _temp_beside(target, ".export.onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        # Tracing warns about every Python int taken from a shape: capacity and padding are
        # static by design, so those constants are what we want.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            args,
            tmp,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            dynamo=False,
        )
        # Tensors above 2 GB (ViT-H scale) go to external files beside the model; loading
        # without them keeps the references intact while the metadata is added.
        proto = onnx.load(tmp, load_external_data=False)
        _set_metadata(proto, metadata)
        if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            _materialize_shared_weights(proto)
            onnx.checker.check_model(proto)
        with atomic_open(target, "wb") as f:
            f.write(proto.SerializeToString())
    return target


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
        keep_ratio = validate_keep_ratio(keep_ratio)
        if not big_little and keep_ratio != 1.0:
            raise ValueError(
                f"{type(encoder).__name__} is plain SAM and has no keep ratio below 1 "
                f"(got {keep_ratio}); keep ratios apply to big.LITTLE encoders"
            )
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


def _decoder_inputs(
    sam: Sam, num_points: int = 5, seed: int = 0, num_prompts: int = 1
) -> Dict[str, Tensor]:
    """Example inputs of the prompt decoder, as ``scripts/export_onnx_model.py`` makes them, with
    ``num_prompts`` (K) prompt sets against one image.

    image_embeddings: 1 x C x h x w; point_coords: K x N x 2 (input-frame pixels); point_labels:
    K x N; mask_input: 1 x 1 x 4h x 4w; has_mask_input: 1; orig_im_size: 2 (H, W).
    """
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    size = int(sam.image_encoder.img_size)
    gen = torch.Generator().manual_seed(seed)
    k = num_prompts
    return {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, generator=gen),
        "point_coords": torch.randint(0, size, (k, num_points, 2), generator=gen).float(),
        "point_labels": torch.randint(0, 4, (k, num_points), generator=gen).float(),
        "mask_input": torch.randn(1, 1, *[4 * s for s in embed_size], generator=gen),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([size * 3 // 4, size], dtype=torch.float),
    }


def _onnx_decoder_model(
    sam: Sam,
    return_single_mask: bool,
    use_stability_score: bool,
    return_extra_metrics: bool,
) -> nn.Module:
    from segment_anything.utils.onnx import SamOnnxModel

    class SamOnnxDecoder(SamOnnxModel):
        """``SamOnnxModel`` whose crop to the resized image stays dynamic when traced.

        Upstream crops with ``masks[..., : int(h), : int(w)]``; tracing turns those ints into the
        example's constants, so the exported masks are right only for images of the example's
        aspect ratio. Here the crop is an ``index_select`` over ``arange(h)``, which exports as
        ``Range`` + ``Gather``; the numbers equal upstream's.

        With ``use_stability_score``, a mask that is empty at both thresholds has stability
        0 / 0 = NaN upstream, and ``return_single_mask`` then picks by ``argmax`` over a NaN:
        PyTorch returns the NaN's index, onnxruntime's ArgMax another one, so the two runtimes
        returned different masks. Here such a score counts as 0 (an empty mask is never the
        best); every other score equals upstream's.
        """

        def select_masks(
            self, masks: Tensor, iou_preds: Tensor, num_points: int
        ) -> Tuple[Tensor, Tensor]:
            """masks K x M x h x w, iou_preds K x M -> the best mask K x 1 x h x w and its score."""
            scores = torch.where(torch.isnan(iou_preds), torch.zeros_like(iou_preds), iou_preds)
            return super().select_masks(masks, scores, num_points)

        def mask_postprocessing(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
            """masks K x M x h x w low-res logits -> K x M x H x W at ``orig_im_size`` (H, W)."""
            masks = nn.functional.interpolate(
                masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            )  # (K, M, S, S)
            prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)  # (2,) int64
            rows = torch.arange(prepadded[0], device=masks.device)  # (h',)
            cols = torch.arange(prepadded[1], device=masks.device)  # (w',)
            masks = masks.index_select(2, rows).index_select(3, cols)  # (K, M, h', w')
            size = orig_im_size.to(torch.int64)
            return nn.functional.interpolate(
                masks, size=(size[0], size[1]), mode="bilinear", align_corners=False
            )  # (K, M, H, W)

    return SamOnnxDecoder(
        model=sam,
        return_single_mask=return_single_mask,
        use_stability_score=use_stability_score,
        return_extra_metrics=return_extra_metrics,
    ).eval()


def export_prompt_decoder(
    sam: Sam,
    path: PathLike,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    gelu_approximate: bool = False,
) -> Path:
    """Export SAM's prompt encoder and mask decoder through upstream ``SamOnnxModel``.

    Arguments:
      sam: a ``Sam`` (any registry model; the image encoder is not exported).
      path: the ``.onnx`` file to write (atomically).
      opset: ONNX opset, ``MIN_OPSET`` to :func:`max_opset`.
      return_single_mask: only the best mask (by predicted IoU, or the single-mask output once
        there are more than 2 points); upstream's default is all masks.
      use_stability_score: ``iou_predictions`` are stability scores of the low-resolution masks
        (offset 1.0) instead of the predicted IoU.
      return_extra_metrics: also return ``stability_scores`` and ``areas`` of the upscaled masks.
      gelu_approximate: GELU as its tanh approximation (the model itself is left exact).
      (All four as upstream's ``scripts/export_onnx_model.py``.)

    Inputs (``segment_anything``'s names): image_embeddings 1 x C x h x w (the encoder's output),
    point_coords K x N x 2 (K prompt sets for the same image and N points each, both dynamic;
    pixels in the resized input frame; a box is its two corners with labels 2 and 3, and without
    a box add a (0, 0) point of label -1), point_labels K x N, mask_input 1 x 1 x 4h x 4w (or
    K x 1 x 4h x 4w), has_mask_input 1, orig_im_size 2 (H, W). Outputs: masks K x M x H x W
    logits at the original size, iou_predictions K x M, low_res_masks K x M x 4h x 4w (M = 1 with
    ``return_single_mask``, else 4: the single-mask output, then SAM's three multimask outputs);
    with ``return_extra_metrics`` also stability_scores K x M and areas K x M, before
    low_res_masks.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      ValueError: ``sam`` is not a ``Sam``, or the opset is out of range.
    """
    if not isinstance(sam, Sam):
        raise ValueError(
            "export_prompt_decoder needs a whole segment_anything Sam (from sam_model_registry), "
            f"got {type(sam).__name__}"
        )
    encoder = sam.image_encoder
    opset = validate_opset(opset)
    onnx_model = _onnx_decoder_model(
        sam, return_single_mask, use_stability_score, return_extra_metrics
    )
    # Traced with 2 prompt sets, so no reshape can fold the prompt count into a constant.
    inputs = _decoder_inputs(sam, num_prompts=2)
    device = next(sam.parameters()).device
    args = tuple(v.to(device) for v in inputs.values())
    metadata = {
        "producer": "biglittle_sam",
        "kind": "prompt_decoder",
        "model_name": _model_name(encoder) if isinstance(encoder, _ENCODERS) else "custom",
        "img_size": str(int(encoder.img_size)),
        "return_single_mask": str(bool(return_single_mask)),
        "use_stability_score": str(bool(use_stability_score)),
        "return_extra_metrics": str(bool(return_extra_metrics)),
        "gelu_approximate": str(bool(gelu_approximate)),
        "prompts": "point_coords K x N x 2: K prompt sets (boxes) per image, both dynamic",
    }
    outputs = DECODER_EXTRA_OUTPUTS if return_extra_metrics else DECODER_OUTPUTS
    prompt_axes = {0: "num_prompts", 1: "num_points"}
    dynamic_axes = {"point_coords": prompt_axes, "point_labels": prompt_axes}
    dynamic_axes["mask_input"] = {0: "num_masks"}
    dynamic_axes.update({name: {0: "num_prompts"} for name in outputs})
    was_training = sam.training
    try:
        sam.eval()
        with gelu_approximation(onnx_model, gelu_approximate):
            return _torch_export(
                onnx_model, args, path, opset, DECODER_INPUTS, outputs, dynamic_axes, metadata
            )
    finally:
        sam.train(was_training)


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (model_name, keep_ratio, img_size, ...)."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _session(
    path: PathLike,
    threads: Optional[int] = None,
    spinning: bool = False,
    profile_prefix: Optional[str] = None,
) -> Any:
    """An onnxruntime CPU session; ``threads`` sets the intra-op thread count (None: its
    default); ``spinning`` lets its worker threads spin between operators (onnxruntime's own
    default); ``profile_prefix`` turns profiling on, writing there."""
    ort = _require("onnxruntime")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ONNX model {file} not found")
    options = ort.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        options.intra_op_num_threads = threads
    # onnxruntime's worker threads spin for a while after each run by default; that takes the CPU
    # from whatever runs next in the process (PyTorch, another session), so by default they sleep.
    flag = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", flag)
    options.add_session_config_entry("session.inter_op.allow_spinning", flag)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def encoder_input_size(session: Any, path: PathLike) -> int:
    """The input side S of an image encoder export's session (its ``image`` input is
    B x 3 x S x S; S from the file's metadata where the graph leaves it symbolic).

    Raises:
      ValueError: the session's inputs are not an image encoder export's.
    """
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [ENCODER_INPUT]:
        raise ValueError(
            f"{path}: not an image encoder export: inputs {[i.name for i in inputs]}, "
            f"expected ['{ENCODER_INPUT}']"
        )
    size = inputs[0].shape[-1]
    if isinstance(size, int):
        return size
    return int(dict(session.get_modelmeta().custom_metadata_map)["img_size"])


class OnnxImageEncoder:
    """An exported image encoder in an onnxruntime CPU session, called like the PyTorch encoder.

    ``encoder(x)``: x B x 3 x S x S (normalized, padded) -> B x out_chans x S/16 x S/16, as a
    float32 tensor on x's device.
    """

    def __init__(
        self, path: PathLike, threads: Optional[int] = None, spinning: bool = False
    ) -> None:
        """
        Arguments:
          path: a file written by :func:`export_image_encoder`.
          threads: onnxruntime intra-op threads (None: onnxruntime's default, all cores).
          spinning: let onnxruntime's threads spin between operators (its own default; faster for
            graphs of many small operators, but the spinning takes the CPU from other work in the
            process for a while after each run). Default: they sleep.
        """
        self.path = Path(path)
        self.session = _session(self.path, threads, spinning)
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.img_size: int = encoder_input_size(self.session, self.path)
        ratio = self.metadata.get("keep_ratio")
        self.keep_ratio: Optional[float] = float(ratio) if ratio is not None else None

    def __call__(self, x: Tensor) -> Tensor:
        """x: B x 3 x S x S float tensor -> B x out_chans x S/16 x S/16 image embeddings."""
        S = self.img_size
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"expected a float tensor of shape B x 3 x {S} x {S}, got {x!r:.60}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ValueError(
                f"expected input of shape B x 3 x {S} x {S} (normalized and padded by "
                f"Sam.preprocess), got {tuple(x.shape)}"
            )
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([ENCODER_OUTPUT], {ENCODER_INPUT: array})
        return torch.from_numpy(out).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxImageEncoder({str(self.path)!r}, keep_ratio={self.keep_ratio})"


@dataclass(frozen=True)
class Comparison:
    """How far an exported file's outputs are from PyTorch's on the same inputs.

    ``max_abs``: the largest absolute difference over all outputs; ``min_cosine``: the lowest
    cosine similarity of an output (flattened) to PyTorch's.
    """

    max_abs: float
    min_cosine: float

    def passes(self, quantized: bool, tolerance: float = FP32_TOLERANCE) -> bool:
        """fp32 files: ``max_abs <= tolerance``; int8 files: ``min_cosine >= INT8_MIN_COSINE``."""
        if quantized:
            return self.min_cosine >= INT8_MIN_COSINE
        return self.max_abs <= tolerance


def _comparison(outputs: Sequence[Tensor], expected: Sequence[Tensor]) -> Comparison:
    max_abs, min_cos = 0.0, 1.0
    for out, ref in zip(outputs, expected):
        a, b = out.double().flatten(), ref.double().flatten().cpu()
        if a.numel() == 0:
            continue
        max_abs = max(max_abs, float((a - b).abs().max()))
        norm = float(a.norm() * b.norm())
        cos = float(a @ b) / norm if norm > 0 else (1.0 if torch.equal(a, b) else 0.0)
        min_cos = min(min_cos, cos)
    return Comparison(max_abs=max_abs, min_cosine=min_cos)


def check_image_encoder(
    model: Union[Sam, nn.Module],
    path: PathLike,
    x: Optional[Tensor] = None,
    threads: Optional[int] = None,
) -> Comparison:
    """The exported encoder in onnxruntime against ``model`` in PyTorch.

    Arguments:
      model: what was exported (a ``Sam`` or its encoder); run at the file's keep ratio, with
        GELU approximated when the file was exported so.
      path: the exported encoder (fp32 or its :func:`quantize_onnx` copy).
      x: B x 3 x S x S input; None draws one (seed 0).
      threads: onnxruntime intra-op threads.
    """
    encoder, _ = _split_model(model)
    session = OnnxImageEncoder(path, threads=threads)
    if x is None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, encoder.img_size, encoder.img_size, generator=gen)
    param = next(encoder.parameters())
    approximate = session.metadata.get("gelu_approximate") == "True"
    with _export_state(encoder, session.keep_ratio), torch.no_grad():
        with gelu_approximation(encoder, approximate):
            expected = encoder(x.to(param.device, param.dtype)).float().cpu()
    return _comparison([session(x.cpu())], [expected])


def compare_image_encoder(
    model: Union[Sam, nn.Module],
    path: PathLike,
    x: Optional[Tensor] = None,
    threads: Optional[int] = None,
) -> float:
    """Max abs difference between the exported encoder in onnxruntime and ``model`` in PyTorch
    (see :func:`check_image_encoder`)."""
    return check_image_encoder(model, path, x, threads).max_abs


def check_prompt_decoder(
    sam: Sam,
    path: PathLike,
    num_points: int = 3,
    num_prompts: int = 2,
    threads: Optional[int] = None,
) -> Comparison:
    """The exported prompt decoder in onnxruntime against ``SamOnnxModel`` run in PyTorch with the
    file's options, on random inputs: ``num_prompts`` prompt sets of ``num_points`` points."""
    metadata = read_metadata(path)
    onnx_model = _onnx_decoder_model(
        sam,
        metadata.get("return_single_mask", "True") == "True",
        metadata.get("use_stability_score", "False") == "True",
        metadata.get("return_extra_metrics", "False") == "True",
    )
    inputs = _decoder_inputs(sam, num_points=num_points, seed=1, num_prompts=num_prompts)
    # An image size of another aspect ratio than the traced example's, so a size folded into a
    # constant shows.
    size = int(sam.image_encoder.img_size)
    inputs["orig_im_size"] = torch.tensor([size * 5 // 8 + 1, size * 3 // 2], dtype=torch.float)
    session = _session(path, threads)
    outputs = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    device = next(sam.parameters()).device
    approximate = metadata.get("gelu_approximate") == "True"
    with torch.no_grad(), gelu_approximation(onnx_model, approximate):
        expected = onnx_model(*(v.to(device) for v in inputs.values()))
    return _comparison(
        [torch.from_numpy(o).float() for o in outputs], [e.float() for e in expected]
    )


def compare_prompt_decoder(
    sam: Sam,
    path: PathLike,
    num_points: int = 3,
    threads: Optional[int] = None,
    num_prompts: int = 2,
) -> float:
    """Max abs difference, over all outputs, between the exported prompt decoder in onnxruntime and
    ``SamOnnxModel`` run in PyTorch (see :func:`check_prompt_decoder`)."""
    return check_prompt_decoder(sam, path, num_points, num_prompts, threads).max_abs


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

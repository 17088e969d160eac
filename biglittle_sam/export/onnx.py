"""ONNX export: the image encoder at a fixed keep ratio, and SAM's prompt encoder + mask decoder.

The two files form a pair, as in ``segment_anything``'s ONNX example:

- ``export_image_encoder`` writes the encoder. Input ``image``: B x 3 x S x S float32, normalized
  and padded exactly as ``Sam.preprocess`` does (S = ``img_size``, 1024 for the full-size models).
  Output ``image_embeddings``: B x out_chans x S/16 x S/16. The batch dimension is dynamic. A
  big.LITTLE encoder is exported at one keep ratio: capacity is ``ceil(r * group)`` tokens per
  group, fixed by the ratio, so the top-k, gather and scatter have static shapes and the graph
  holds no data-dependent shape. Another ratio needs another file.
- ``export_prompt_decoder`` writes the prompt encoder and mask decoder through upstream
  ``segment_anything.utils.onnx.SamOnnxModel``, with the input names and dynamic axes of
  ``segment_anything``'s ``scripts/export_onnx_model.py``.

Both go through PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). The
dynamo exporter cannot yet decompose the encoder's fused attention path (see docs/export.md).
``onnx`` and ``onnxruntime`` are imported only when needed: ``pip install "biglittle-sam[export]"``.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import numbers
import os
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, Optional, Tuple, Union

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
    "OnnxImageEncoder",
    "compare_image_encoder",
    "compare_prompt_decoder",
    "export_image_encoder",
    "export_prompt_decoder",
    "max_opset",
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
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".export.onnx", dir=target.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
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
        # Tensors above 2 GB (ViT-H scale) go to external files beside the model; loading without
        # them keeps the references intact while the metadata is added.
        proto = onnx.load(tmp, load_external_data=False)
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            onnx.checker.check_model(proto)
        with atomic_open(target, "wb") as f:
            f.write(proto.SerializeToString())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


def export_image_encoder(
    model: Union[Sam, nn.Module],
    path: PathLike,
    keep_ratio: Optional[float] = None,
    opset: int = DEFAULT_OPSET,
    img_size: Optional[int] = None,
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
    param = next(encoder.parameters())
    # Traced at batch 2, so no reshape can fold the batch size into a constant.
    dummy = torch.randn(2, 3, size, size, device=param.device, dtype=param.dtype)
    metadata = {
        "producer": "biglittle_sam",
        "kind": "image_encoder",
        "model_name": _model_name(encoder),
        "encoder_class": type(encoder).__name__,
        "keep_ratio": repr(float(ratio)),
        "img_size": str(size),
        "teacher": str(getattr(encoder, "teacher", "") or ""),
        "input": f"{ENCODER_INPUT}: B x 3 x {size} x {size} float32, as Sam.preprocess",
        "output": f"{ENCODER_OUTPUT}: B x out_chans x {size // 16} x {size // 16}",
    }
    if sam is not None:
        metadata["pixel_mean"] = ",".join(f"{v:g}" for v in sam.pixel_mean.flatten().tolist())
        metadata["pixel_std"] = ",".join(f"{v:g}" for v in sam.pixel_std.flatten().tolist())
    with _export_state(encoder, keep_ratio):
        return _torch_export(
            encoder,
            (dummy,),
            path,
            opset,
            (ENCODER_INPUT,),
            (ENCODER_OUTPUT,),
            {ENCODER_INPUT: {0: "batch"}, ENCODER_OUTPUT: {0: "batch"}},
            metadata,
        )


def _decoder_inputs(sam: Sam, num_points: int = 5, seed: int = 0) -> Dict[str, Tensor]:
    """Example inputs of the prompt decoder, as ``scripts/export_onnx_model.py`` makes them.

    image_embeddings: 1 x C x h x w; point_coords: 1 x N x 2 (input-frame pixels); point_labels:
    1 x N; mask_input: 1 x 1 x 4h x 4w; has_mask_input: 1; orig_im_size: 2 (H, W).
    """
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    size = int(sam.image_encoder.img_size)
    gen = torch.Generator().manual_seed(seed)
    return {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, generator=gen),
        "point_coords": torch.randint(0, size, (1, num_points, 2), generator=gen).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=gen).float(),
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

    return SamOnnxModel(
        model=sam,
        return_single_mask=return_single_mask,
        use_stability_score=use_stability_score,
        return_extra_metrics=return_extra_metrics,
    ).eval()


def export_prompt_decoder(
    sam: Sam,
    path: PathLike,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = True,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
) -> Path:
    """Export SAM's prompt encoder and mask decoder through upstream ``SamOnnxModel``.

    Arguments:
      sam: a ``Sam`` (any registry model; the image encoder is not exported).
      path: the ``.onnx`` file to write (atomically).
      opset: ONNX opset, ``MIN_OPSET`` to :func:`max_opset`.
      return_single_mask, use_stability_score, return_extra_metrics: as in ``SamOnnxModel``.

    Inputs (``segment_anything``'s names): image_embeddings 1 x C x h x w (the encoder's output),
    point_coords 1 x N x 2 (N dynamic; pixels in the resized input frame, add a (0, 0) point of
    label -1 when there is no box), point_labels 1 x N, mask_input 1 x 1 x 4h x 4w,
    has_mask_input 1, orig_im_size 2 (H, W). Outputs: masks 1 x M x H x W logits at the original
    size, iou_predictions 1 x M, low_res_masks 1 x M x 4h x 4w (M = 1 with
    ``return_single_mask``, else 4).

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
    inputs = _decoder_inputs(sam)
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
    }
    was_training = sam.training
    try:
        sam.eval()
        return _torch_export(
            onnx_model,
            args,
            path,
            opset,
            DECODER_INPUTS,
            DECODER_OUTPUTS,
            {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            metadata,
        )
    finally:
        sam.train(was_training)


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (model_name, keep_ratio, img_size, ...)."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _session(path: PathLike, threads: Optional[int] = None) -> Any:
    """An onnxruntime CPU session; ``threads`` sets the intra-op thread count (None: its
    default)."""
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
    # from whatever runs next in the process (PyTorch, another session), so they sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


class OnnxImageEncoder:
    """An exported image encoder in an onnxruntime CPU session, called like the PyTorch encoder.

    ``encoder(x)``: x B x 3 x S x S (normalized, padded) -> B x out_chans x S/16 x S/16, as a
    float32 tensor on x's device.
    """

    def __init__(self, path: PathLike, threads: Optional[int] = None) -> None:
        """
        Arguments:
          path: a file written by :func:`export_image_encoder`.
          threads: onnxruntime intra-op threads (None: onnxruntime's default, all cores).
        """
        self.path = Path(path)
        self.session = _session(self.path, threads)
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [ENCODER_INPUT]:
            raise ValueError(
                f"{self.path}: not an image encoder export: inputs {[i.name for i in inputs]}, "
                f"expected ['{ENCODER_INPUT}']"
            )
        size = inputs[0].shape[-1]
        self.img_size: int = int(size) if isinstance(size, int) else int(self.metadata["img_size"])
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


def compare_image_encoder(
    model: Union[Sam, nn.Module],
    path: PathLike,
    x: Optional[Tensor] = None,
    threads: Optional[int] = None,
) -> float:
    """Max abs difference between the exported encoder in onnxruntime and ``model`` in PyTorch.

    Arguments:
      model: what was exported (a ``Sam`` or its encoder); run at the file's keep ratio.
      path: the exported encoder.
      x: B x 3 x S x S input; None draws one (seed 0).
      threads: onnxruntime intra-op threads.
    """
    encoder, _ = _split_model(model)
    session = OnnxImageEncoder(path, threads=threads)
    if x is None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, encoder.img_size, encoder.img_size, generator=gen)
    param = next(encoder.parameters())
    with _export_state(encoder, session.keep_ratio), torch.no_grad():
        expected = encoder(x.to(param.device, param.dtype)).float().cpu()
    return float((session(x.cpu()) - expected).abs().max())


def compare_prompt_decoder(
    sam: Sam,
    path: PathLike,
    num_points: int = 3,
    threads: Optional[int] = None,
) -> float:
    """Max abs difference, over all outputs, between the exported prompt decoder in onnxruntime and
    ``SamOnnxModel`` run in PyTorch, on random inputs with ``num_points`` points."""
    metadata = read_metadata(path)
    onnx_model = _onnx_decoder_model(
        sam,
        metadata.get("return_single_mask", "True") == "True",
        metadata.get("use_stability_score", "False") == "True",
        metadata.get("return_extra_metrics", "False") == "True",
    )
    inputs = _decoder_inputs(sam, num_points=num_points, seed=1)
    session = _session(path, threads)
    outputs = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    device = next(sam.parameters()).device
    with torch.no_grad():
        expected = onnx_model(*(v.to(device) for v in inputs.values()))
    diffs = [
        (torch.from_numpy(o).float() - e.float().cpu()).abs().max()
        for o, e in zip(outputs, expected)
    ]
    return float(max(diffs)) if diffs else math.nan

"""Exported files in onnxruntime: CPU sessions, ``OnnxImageEncoder`` (called like the PyTorch
encoder), and the checks of a file against PyTorch (max abs difference and cosine similarity) for
``--check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn

from .decoder import _decoder_inputs, _onnx_decoder_model
from .encoder import ENCODER_INPUT, ENCODER_OUTPUT, _export_state, _split_model
from .onnx_file import PathLike, _require, gelu_approximation, read_metadata

__all__ = [
    "FP32_TOLERANCE",
    "INT8_MIN_COSINE",
    "encoder_input_size",
    "OnnxImageEncoder",
    "Comparison",
    "check_image_encoder",
    "compare_image_encoder",
    "check_prompt_decoder",
    "compare_prompt_decoder",
]

# --check: an fp32 file passes when every output is within this max abs difference of PyTorch.
FP32_TOLERANCE = 1e-3
# --check: an int8 file (quantize_onnx) passes when every output keeps this cosine similarity to
# fp32 PyTorch (the embedding-fidelity bar of the int8 work).
INT8_MIN_COSINE = 0.99


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
    """Max abs difference and lowest cosine similarity of each output to its expected tensor."""
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

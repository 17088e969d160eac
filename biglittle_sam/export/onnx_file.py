"""One ONNX file: the optional packages, the opset, the TorchScript export that writes it, and the
metadata it carries.

Both exports (:mod:`.encoder`, :mod:`.decoder`) go through PyTorch's TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``). The dynamo exporter cannot yet decompose the encoder's
fused attention path (see docs/export.md). ``onnx`` and ``onnxruntime`` are imported only when
needed: ``pip install "biglittle-sam[export]"``.
"""

from __future__ import annotations

import contextlib
import importlib
import numbers
import os
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, Tuple, Union

import torch
from torch import Tensor, nn

from ..fileio import atomic_open

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "gelu_approximation",
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


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (model_name, keep_ratio, img_size, ...)."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}

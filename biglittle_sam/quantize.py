"""Dynamic int8 quantisation of an image encoder's Linear layers, for CPU inference in PyTorch.

``quantize_encoder_int8(sam)`` returns a copy of ``sam`` (or of a bare image encoder) whose image
encoder runs its ``nn.Linear`` layers with int8 weights and int8 activations quantised per batch
at run time (``torch.ao.quantization.quantize_dynamic``); everything else stays fp32, so the
copy is still an upstream ``Sam`` that ``SamPredictor`` and ``SamAutomaticMaskGenerator`` take.

What stays fp32, and why:

- convolutions (patch embedding, neck): dynamic quantisation covers Linear layers only;
- the prompt encoder and mask decoder: small against the encoder, and the quality-critical part;
- the ``qkv`` projection of this package's attention (big blocks, E-blocks and the fused SAM
  path): it is applied as slices of its weight (queries of routed tokens, keys/values of the
  pooled grid), which a quantised module does not expose. SAM's own ``segment_anything``
  attention calls ``qkv`` as a module, so upstream SAM's ``qkv`` is quantised.

Dynamic int8 runs on CPU only. The quantised model is for inference: its int8 weights take no
gradients.
"""

from __future__ import annotations

import copy
import warnings
from typing import List, Set, TypeVar

import torch
from segment_anything.modeling import Sam
from torch import nn

from .modeling import Attention

__all__ = ["quantize_encoder_int8", "int8_linear_names", "is_int8"]

ModelT = TypeVar("ModelT", bound=nn.Module)


def _encoder(model: nn.Module) -> nn.Module:
    return model.image_encoder if isinstance(model, Sam) else model


def int8_linear_names(model: nn.Module) -> List[str]:
    """The ``nn.Linear`` layers of ``model``'s image encoder that :func:`quantize_encoder_int8`
    quantises, by name inside the encoder: every Linear but the sliced ``qkv`` of this package's
    :class:`~biglittle_sam.modeling.Attention`."""
    encoder = _encoder(model)
    sliced: Set[str] = {
        f"{name}.qkv" if name else "qkv"
        for name, module in encoder.named_modules()
        if isinstance(module, Attention)
    }
    return [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear) and name not in sliced
    ]


def is_int8(model: nn.Module) -> bool:
    """Whether ``model``'s image encoder holds dynamically quantised Linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in _encoder(model).modules())


def quantize_encoder_int8(model: ModelT, inplace: bool = False) -> ModelT:
    """``model`` with its image encoder's Linear layers in dynamic int8 (see the module docstring).

    Arguments:
      model: a ``Sam`` (only its image encoder is quantised) or a bare image encoder (SAM's own,
        big.LITTLE, or the fused SAM encoder), on the CPU.
      inplace: quantise ``model`` itself rather than a deep copy.

    Returns:
      The quantised model, in eval mode. The keep ratio and pooling controls of a big.LITTLE
      encoder work on it as before.

    Raises:
      ValueError: ``model`` is not on the CPU, or is quantised already.
      RuntimeError: this PyTorch build has no quantised CPU engine.
    """
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(
            f"dynamic int8 quantisation runs on the CPU, but the model is on {sorted(devices)}; "
            "move it first with model.cpu()"
        )
    if is_int8(model):
        raise ValueError("the model's image encoder is quantised to int8 already")
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        raise RuntimeError("this PyTorch build has no quantised CPU engine (fbgemm, x86, qnnpack)")
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    encoder = _encoder(target)
    names = int8_linear_names(encoder)
    if names:
        with warnings.catch_warnings():
            # PyTorch announces the removal of quantised tensor types; they work in this release.
            # (torchao is the successor; not a dependency here).
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated")
            warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
            torch.ao.quantization.quantize_dynamic(
                encoder, qconfig_spec=set(names), dtype=torch.qint8, inplace=True
            )
    return target

"""Mixed precision: bf16 autocast with every LayerNorm kept in fp32.

Weights stay fp32 (AdamW updates them in full precision); only the matrix products run in bf16.
LayerNorm statistics over 768-1280 channels lose too much in bf16, so each norm module runs with
autocast switched off on an fp32 copy of its input. bf16 has fp32's exponent range, so no loss
scaler is needed.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn

__all__ = ["resolve_amp", "autocast_context", "keep_norms_fp32", "NORM_TYPES"]

NORM_TYPES = (nn.LayerNorm, LayerNorm2d)


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``amp`` on ``device``: bf16 or None (full fp32).

    ``auto`` is bf16 on a CUDA device that supports it and fp32 elsewhere; ``bf16`` asks for it
    explicitly (CPU autocast too); ``off`` is fp32.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"amp 'bf16' asked for, but {device} does not support bfloat16")
        return torch.bfloat16
    raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_norms_fp32(module: nn.Module) -> int:
    """Make every LayerNorm / LayerNorm2d in ``module`` compute in fp32 under autocast.

    The module's ``forward`` is wrapped on the instance, so parameter names and the state dict do
    not change. Idempotent. Returns how many norms were wrapped by this call.
    """
    count = 0
    for m in module.modules():
        if not isinstance(m, NORM_TYPES) or getattr(m, "_fp32_norm", False):
            continue
        inner = m.forward

        def forward(x: Tensor, _inner: Any = inner) -> Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return _inner(x.float())

        m.forward = forward  # type: ignore[method-assign]
        m._fp32_norm = True  # type: ignore[assignment]
        count += 1
    return count

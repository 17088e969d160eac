"""The speed benchmark's "transformers" runtime: transformers' own SAM against the swap.

The baseline is transformers' ``SamModel`` vision encoder (its own attention implementation, as a
transformers user runs SAM); the big.LITTLE rows are the same model after
:func:`biglittle_sam.hf.to_biglittle`, at each keep ratio (training-free with ``--training-free``,
else fresh E-blocks and routers: speed does not depend on the weights). Each row times
``vision_encoder(pixel_values)``, B x 3 x S x S in, B x 256 x S/16 x S/16 out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from ..config import BigLittleConfig, get_config
from ..flops import encoder_gmacs
from .rows import BenchmarkConfig, ModelResult, Row

__all__ = ["transformers_rows"]


def _params_m(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _last_hidden(encoder: nn.Module) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> Any:
        return encoder(pixel_values=x).last_hidden_state  # (B, 256, S/16, S/16)

    return run


def transformers_rows(cfg: BenchmarkConfig, overrides: Dict[str, Any]) -> List[Row]:
    """SAM ``cfg.sam`` as transformers builds it, then the swapped model at each keep ratio."""
    from transformers import SamModel

    from ..hf import hf_config_from_sam, to_biglittle

    sam_cfg = get_config(cfg.sam)
    if isinstance(sam_cfg, BigLittleConfig):
        raise ValueError(f"--sam must name a plain SAM model, got big.LITTLE '{cfg.sam}'")
    sam_cfg = dataclasses.replace(sam_cfg, **overrides)
    stock = SamModel(hf_config_from_sam(sam_cfg)).eval()
    base = stock.vision_encoder
    size = sam_cfg.img_size
    result = ModelResult(
        name=f"SAM {cfg.sam} (transformers SamModel)",
        family="sam",
        keep_ratio=None,
        input_size=size,
        params_m=_params_m(base),
        gmacs=encoder_gmacs(sam_cfg),
        gmacs_source="analytic",
        runtime="transformers",
    )
    rows = [Row(result, base, lambda: None, fn=_last_hidden(base))]
    swapped = to_biglittle(stock, training_free=cfg.training_free)
    del stock
    encoder = swapped.vision_encoder
    mode = ", training-free" if cfg.training_free else ""
    for r in cfg.keep_ratios:

        def prepare(r: float = r) -> None:
            swapped.keep_ratio = r

        result = ModelResult(
            name=f"{cfg.model} r={r:g}{mode} (transformers, to_biglittle)",
            family="biglittle",
            keep_ratio=r,
            input_size=size,
            params_m=_params_m(encoder),
            gmacs=encoder_gmacs(swapped.image_encoder, r),
            gmacs_source="analytic",
            runtime="transformers",
        )
        rows.append(Row(result, encoder, prepare, fn=_last_hidden(encoder)))
    return rows

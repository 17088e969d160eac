"""The speed benchmark's "transformers" runtime: transformers' own SAM against the swap.

The baseline is transformers' ``SamModel`` vision encoder (its own attention implementation, as a
transformers user runs SAM); the big.LITTLE rows are the same model after
:func:`biglittle_sam.hf.to_biglittle`, at each keep ratio (training-free with ``--training-free``,
else fresh E-blocks and routers: speed does not depend on the weights). Each row times
``vision_encoder(pixel_values)``, B x 3 x S x S in, B x 256 x S/16 x S/16 out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..config import BigLittleConfig, get_config
from ..flops import encoder_gmacs
from .rows import BenchmarkConfig, ModelResult, Row

__all__ = ["last_hidden", "row_result", "transformers_rows"]


def row_result(
    name: str, family: str, ratio: Optional[float], size: int, module: nn.Module, gmacs: float
) -> ModelResult:
    """A transformers row's figures known before timing (analytic GMACs)."""
    params = sum(p.numel() for p in module.parameters()) / 1e6
    return ModelResult(name, family, ratio, size, params, gmacs, "analytic", runtime="transformers")


def last_hidden(encoder: nn.Module) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> Any:
        return encoder(pixel_values=x).last_hidden_state  # (B, 256, S/16, S/16)

    return run


def transformers_rows(cfg: BenchmarkConfig) -> List[Row]:
    """SAM ``cfg.sam`` as transformers builds it, then the swapped model at each keep ratio."""
    overrides: Dict[str, Any] = {} if cfg.img_size is None else {"img_size": cfg.img_size}
    from transformers import SamModel

    from ..hf import hf_config_from_sam, to_biglittle

    sam_cfg = get_config(cfg.sam)
    if isinstance(sam_cfg, BigLittleConfig):
        raise ValueError(f"--sam must name a plain SAM model, got big.LITTLE '{cfg.sam}'")
    sam_cfg = dataclasses.replace(sam_cfg, **overrides)
    stock = SamModel(hf_config_from_sam(sam_cfg)).eval()
    base = stock.vision_encoder
    size = sam_cfg.img_size
    name = f"SAM {cfg.sam} (transformers SamModel)"
    result = row_result(name, "sam", None, size, base, encoder_gmacs(sam_cfg))
    rows = [Row(result, base, lambda: None, fn=last_hidden(base))]
    swapped = to_biglittle(stock, training_free=cfg.training_free)
    del stock
    encoder = swapped.vision_encoder
    mode = ", training-free" if cfg.training_free else ""
    for r in cfg.keep_ratios:

        def prepare(r: float = r) -> None:
            swapped.keep_ratio = r

        name = f"{cfg.model} r={r:g}{mode} (transformers, to_biglittle)"
        gmacs = encoder_gmacs(swapped.image_encoder, r)
        result = row_result(name, "biglittle", r, size, encoder, gmacs)
        rows.append(Row(result, encoder, prepare, fn=last_hidden(encoder)))
    return rows

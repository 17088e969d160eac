"""The speed benchmark's SAM 3 rows (``--family sam3``): SAM 3's backbone against its swap.

The baseline is transformers' ``Sam3ViTModel`` at SAM 3's real size (the default
``Sam3ViTConfig``: 1008 px, a 72 x 72 grid, 32 layers 1024 wide, windows of 24, 4 global layers),
with random weights (speed does not depend on them; nothing is downloaded) and transformers' own
attention backend. The big.LITTLE rows are the same backbone after
:func:`biglittle_sam.hf.to_biglittle_sam3` (training-free) at each keep ratio. Each row times
``backbone(pixel_values).last_hidden_state``: B x 3 x S x S in, B x (S/14)^2 x 1024 out.
"""

from __future__ import annotations

from typing import List

from ..flops import encoder_gmacs
from .hf_rows import last_hidden, row_result
from .rows import BenchmarkConfig, Row

__all__ = ["sam3_rows"]


def sam3_rows(cfg: BenchmarkConfig) -> List[Row]:
    """SAM 3's stock ViT backbone, then the big.LITTLE swap at each of ``cfg.keep_ratios``
    (training-free: the only form built for SAM 3). ``cfg.img_size`` overrides 1008 (it must
    tile into SAM 3's windows: a multiple of 14 * 24)."""
    from transformers import Sam3ViTConfig, Sam3ViTModel

    from ..hf import to_biglittle_sam3

    config = Sam3ViTConfig(**({"image_size": cfg.img_size} if cfg.img_size else {}))
    stock = Sam3ViTModel(config).eval()
    size = int(config.image_size)
    name = "SAM 3 ViT backbone (transformers Sam3ViTModel)"
    result = row_result(name, "sam", None, size, stock, encoder_gmacs(stock))
    rows = [Row(result, stock, lambda: None, fn=last_hidden(stock))]
    swapped = to_biglittle_sam3(stock, keep_ratio=1.0)
    for r in cfg.keep_ratios:

        def prepare(r: float = r) -> None:
            swapped.keep_ratio = r

        label = f"big.LITTLE SAM 3 r={r:g}, training-free (to_biglittle_sam3)"
        result = row_result(label, "biglittle", r, size, swapped, encoder_gmacs(swapped, r))
        rows.append(Row(result, swapped, prepare, fn=last_hidden(swapped)))
    return rows

"""What one training step of the proxy teacher costs, to estimate the full run's budget.

:func:`measure_costs` times, on random inputs at a geometry: one encoder forward and backward per
image, and one prompt encoder + mask decoder call (forward and backward, one box prompt) per
object. The docs' budget estimate multiplies these by the steps and images of each stage.
"""

from __future__ import annotations

import time
from typing import Dict

import torch

from biglittle_sam.build_sam import build_sam_from_config
from biglittle_sam.config import SamViTConfig

__all__ = ["measure_costs"]


def _best_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """The fastest of ``repeats`` timed calls after one warm-up, in milliseconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000.0


def measure_costs(
    config: SamViTConfig, batch_size: int = 8, repeats: int = 3, device: str = "cpu"
) -> Dict[str, float]:
    """Milliseconds of the teacher's parts at ``config``'s geometry (random weights and inputs).

    Returns:
      ``encoder_fwd_bwd_ms_per_image`` (B x 3 x S x S through the encoder, backward of the
      embedding's sum, divided by B) and ``decoder_fwd_bwd_ms_per_prompt`` (B box prompts on one
      image through the prompt encoder and the mask decoder, single mask, divided by B).
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size}, {repeats}")
    sam = build_sam_from_config(config).to(device).train()
    S = config.img_size
    x = torch.randn(batch_size, 3, S, S, device=device)  # (B, 3, S, S)

    def encoder_step() -> None:
        sam.zero_grad(set_to_none=True)
        sam.image_encoder(x).sum().backward()  # (B, C, S/p, S/p) -> scalar

    with torch.no_grad():
        embedding = sam.image_encoder(x[:1])  # (1, C, S/p, S/p): SAM's decoder takes one image
    boxes = torch.tensor([[S * 0.2, S * 0.3, S * 0.6, S * 0.7]], device=device)
    boxes = boxes.expand(batch_size, 4)  # (B, 4)
    pe = sam.prompt_encoder.get_dense_pe()  # (1, C, S/p, S/p)

    def decoder_step() -> None:
        sam.zero_grad(set_to_none=True)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        masks, iou = sam.mask_decoder(embedding, pe, sparse, dense, multimask_output=False)
        (masks.sum() + iou.sum()).backward()  # masks: (B, 1, 4 S/p, 4 S/p)

    return {
        "encoder_fwd_bwd_ms_per_image": _best_ms(encoder_step, repeats) / batch_size,
        "decoder_fwd_bwd_ms_per_prompt": _best_ms(decoder_step, repeats) / batch_size,
    }

"""Segment-everything timing: ``SamAutomaticMaskGenerator`` end to end, split into encoder and
decoder time, for SAM and big.LITTLE at each keep ratio.

The encoder's time is taken by forward hooks on the image encoder (every crop's ``set_image``);
the rest of ``generate`` (prompt encoder, mask decoder over the point grid, mask post-processing,
NMS) is reported as decoder time. Weights are random, as in the speed benchmark: the encoder and
the decoder's batched passes cost what they cost with real weights, but the masks that survive
the IoU and stability filters (and so the post-processing time) differ from a real checkpoint's.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam

from ...build_sam import build_sam_from_config, sam_model_registry, set_keep_ratio
from ...config import get_config
from ...runtime.hardware import hardware_description
from ...runtime.timing import ModuleTimer

__all__ = [
    "SegmentEverythingRow",
    "time_segment_everything",
    "run_segment_everything",
    "segment_everything_markdown",
]


@dataclass
class SegmentEverythingRow:
    """One model's segment-everything times (medians over the repeats, seconds)."""

    name: str
    keep_ratio: Optional[float]
    total_s: float
    encoder_s: float
    decoder_s: float  # total - encoder: prompts, decoder, post-processing, NMS
    masks: int  # masks returned by the last run
    speedup: Optional[float] = None  # SAM's total / this total (end to end)
    encoder_speedup: Optional[float] = None  # SAM's encoder time / this encoder time


def time_segment_everything(
    sam: Sam, image: np.ndarray, repeats: int = 1, **generator_kwargs: Any
) -> Tuple[float, float, int]:
    """Median (total seconds, encoder seconds) of ``repeats`` ``generate`` calls, and the masks.

    Arguments:
      sam: a SAM or big.LITTLE ``Sam`` (its current keep ratio is used).
      image: H x W x 3 uint8 RGB.
      repeats: timed ``generate`` calls (after one untimed warm-up call).
      generator_kwargs: passed to ``SamAutomaticMaskGenerator`` (``points_per_side``...).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    generator = SamAutomaticMaskGenerator(sam, **generator_kwargs)
    totals: List[float] = []
    encoders: List[float] = []
    masks: List[Any] = []
    with torch.inference_mode():
        generator.generate(image)  # warm-up
        for _ in range(repeats):
            with ModuleTimer(sam.image_encoder, cuda=False) as clock:
                start = time.perf_counter()
                masks = generator.generate(image)
                totals.append(time.perf_counter() - start)
            encoders.append(clock.seconds)
    return statistics.median(totals), statistics.median(encoders), len(masks)


def run_segment_everything(
    sam: str = "vit_b",
    model: str = "bl_b",
    keep_ratios: Sequence[float] = (1.0, 0.5, 0.25, 0.1),
    points_per_side: int = 32,
    image_hw: Tuple[int, int] = (768, 1024),
    repeats: int = 1,
    img_size: Optional[int] = None,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Segment everything on one generated image with ``sam`` and ``model`` at each ratio (CPU).

    Returns:
      {"meta", "results": [asdict(SegmentEverythingRow)]}; speedups against the SAM row.
    """
    say = progress or (lambda msg: None)
    torch.manual_seed(seed)
    image = np.random.default_rng(seed).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    overrides: Dict[str, Any] = {} if img_size is None else {"img_size": img_size}
    kwargs = {"points_per_side": points_per_side}
    rows: List[SegmentEverythingRow] = []
    if sam:
        sam_cfg = dataclasses.replace(get_config(sam), **overrides)
        baseline = build_sam_from_config(sam_cfg) if overrides else sam_model_registry[sam]()
        total, enc, n = time_segment_everything(baseline.eval(), image, repeats, **kwargs)
        rows.append(SegmentEverythingRow(f"SAM {sam}", None, total, enc, total - enc, n))
        say(f"segment everything: SAM {sam} {total:.2f} s ({enc:.2f} s encoder)")
    if model:
        bl = sam_model_registry[model](**overrides).eval()
        for r in keep_ratios:
            set_keep_ratio(bl, r)
            total, enc, n = time_segment_everything(bl, image, repeats, **kwargs)
            rows.append(SegmentEverythingRow(f"{model} r={r:g}", r, total, enc, total - enc, n))
            say(f"segment everything: {model} r={r:g} {total:.2f} s ({enc:.2f} s encoder)")
    base = rows[0] if sam and rows else None
    for row in rows:
        if base is not None:
            row.speedup = base.total_s / row.total_s
            row.encoder_speedup = base.encoder_s / row.encoder_s if row.encoder_s else None
    return {
        "meta": {
            "hardware": hardware_description("cpu"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "points_per_side": points_per_side,
            "image_hw": list(image_hw),
            "repeats": repeats,
            "date": time.strftime("%Y-%m-%d"),
        },
        "results": [asdict(r) for r in rows],
    }


def segment_everything_markdown(report: Dict[str, Any]) -> str:
    """The segment-everything table, with the encoder's share of each row's time."""

    def fmt(value: Optional[float], suffix: str = "") -> str:
        return "-" if value is None else f"{value:.2f}{suffix}"

    lines = [
        "| model | total (s) | encoder (s) | decoder + post (s) | encoder share | masks "
        "| end-to-end speedup | encoder speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        share = r["encoder_s"] / r["total_s"] if r["total_s"] else None
        lines.append(
            f"| {r['name']} | {fmt(r['total_s'])} | {fmt(r['encoder_s'])} | "
            f"{fmt(r['decoder_s'])} | {'-' if share is None else f'{100 * share:.0f}%'} | "
            f"{r['masks']} | {fmt(r['speedup'], 'x')} | {fmt(r['encoder_speedup'], 'x')} |"
        )
    meta = report["meta"]
    h, w = meta["image_hw"]
    lines += [
        "",
        f"{meta['hardware']}; torch {meta['torch']}; SamAutomaticMaskGenerator with "
        f"{meta['points_per_side']} points per side on one {w} x {h} image, median of "
        f"{meta['repeats']} runs after a warm-up. Random weights: the masks kept by the filters "
        "(and the post-processing time) differ from a real checkpoint's.",
    ]
    return "\n".join(lines)

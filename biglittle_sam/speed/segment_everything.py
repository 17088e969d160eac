"""Segment-everything timing: ``SamAutomaticMaskGenerator`` end to end, split into encoder and
decoder time, for SAM and big.LITTLE at each keep ratio, with upstream's generator and with
:class:`~biglittle_sam.mask_generator.FastAutomaticMaskGenerator` (the same masks, a cheaper
point loop).

The encoder's time is taken by forward hooks on the image encoder (every crop's ``set_image``);
the rest of ``generate`` (prompt encoder, mask decoder over the point grid, mask post-processing,
NMS) is reported as decoder time. Weights are random, as in the speed benchmark: the encoder and
the decoder's batched passes cost what they cost with real weights, but the masks that survive
the IoU and stability filters (and so the post-processing time) differ from a real checkpoint's.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything.modeling import Sam

from ..build_sam import build_sam_from_config, sam_model_registry, set_keep_ratio
from ..config import get_config
from ..mask_generator import CPU_DECODER_BATCH, decode_points, mask_generator_class
from ..runtime.hardware import hardware_description
from ..runtime.timing import ModuleTimer

__all__ = [
    "SegmentEverythingRow",
    "time_segment_everything",
    "decoder_ms_per_point",
    "run_segment_everything",
    "segment_everything_markdown",
]


@dataclass
class SegmentEverythingRow:
    """One model's segment-everything times (medians over the repeats, seconds)."""

    name: str
    keep_ratio: Optional[float]
    generator: str  # a MASK_GENERATORS key
    total_s: float
    encoder_s: float
    decoder_s: float  # total - encoder: prompts, decoder, post-processing, NMS
    masks: int  # masks returned by the last run
    speedup: Optional[float] = None  # SAM's total with upstream's generator / this total
    speedup_same_generator: Optional[float] = None  # SAM's total with this generator / this total
    encoder_speedup: Optional[float] = None  # SAM's encoder time / this encoder time


def time_segment_everything(
    sam: Sam,
    image: np.ndarray,
    repeats: int = 1,
    generator: str = "upstream",
    **generator_kwargs: Any,
) -> Tuple[float, float, int]:
    """Median (total seconds, encoder seconds) of ``repeats`` ``generate`` calls, and the masks.

    Arguments:
      sam: a SAM or big.LITTLE ``Sam`` (its current keep ratio is used).
      image: H x W x 3 uint8 RGB.
      repeats: timed ``generate`` calls, after one untimed warm-up call on a 2 x 2 point grid
        (it runs the encoder and the decoder once each; the full grid would double the run).
      generator: a :data:`MASK_GENERATORS` key.
      generator_kwargs: passed to the generator (``points_per_side``...).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    make = mask_generator_class(generator)
    warm_kwargs = {k: v for k, v in generator_kwargs.items() if k != "points_per_side"}
    totals: List[float] = []
    encoders: List[float] = []
    masks: List[Any] = []
    with torch.inference_mode():
        make(sam, points_per_side=2, **warm_kwargs).generate(image)  # warm-up
        mask_generator = make(sam, **generator_kwargs)
        for _ in range(repeats):
            with ModuleTimer(sam.image_encoder, cuda=False) as clock:
                start = time.perf_counter()
                masks = mask_generator.generate(image)
                totals.append(time.perf_counter() - start)
            encoders.append(clock.seconds)
    return statistics.median(totals), statistics.median(encoders), len(masks)


def decoder_ms_per_point(
    sam: Sam, batch_sizes: Sequence[int], repeats: int = 5, seed: int = 0, points: int = 24
) -> Dict[str, Dict[int, float]]:
    """The mask decoder's time per point prompt (ms) at each batch size, upstream's and fast's.

    Runs what each generator runs per point batch,
    :func:`~biglittle_sam.mask_generator.decode_points` (prompt encoder, then three masks per
    point: upstream's ``mask_decoder(...)`` on one embedding copy per point, or the one-image
    path), on a random image embedding.
    Every (path, size) decodes about ``points`` points per round, in ``repeats`` interleaved
    rounds after one warm-up call each; the median round is reported.

    Arguments:
      sam: a ``Sam`` (only its prompt encoder and mask decoder run).
      batch_sizes: points per decoder call.
      repeats: interleaved rounds.
      points: points decoded per (path, size) and round (at least one call).

    Returns:
      {"upstream": {size: ms per point}, "fast": {size: ms per point}}.
    """
    if repeats < 1 or points < 1 or any(b < 1 for b in batch_sizes):
        raise ValueError(
            f"repeats, points and batch sizes must be >= 1, got {repeats}, {points}, {batch_sizes}"
        )
    gen = torch.Generator().manual_seed(seed)
    grid = sam.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, sam.prompt_encoder.embed_dim, *grid, generator=gen)
    side = sam.image_encoder.img_size
    calls: Dict[Tuple[str, int], Callable[[], Any]] = {}
    for b in batch_sizes:
        coords = torch.rand(b, 1, 2, generator=gen) * side  # B x 1 x 2
        labels = torch.ones(b, 1, dtype=torch.int)
        for path in ("upstream", "fast"):
            calls[path, b] = functools.partial(
                decode_points, sam, embedding, coords, labels, b, path == "fast"
            )
    rounds: Dict[Tuple[str, int], List[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm-up
        for _ in range(repeats):
            for (path, b), call in calls.items():
                n = max(1, points // b)
                start = time.perf_counter()
                for _ in range(n):
                    call()
                rounds[path, b].append(1000 * (time.perf_counter() - start) / (n * b))
    result: Dict[str, Dict[int, float]] = {"upstream": {}, "fast": {}}
    for (path, b), times in rounds.items():
        result[path][b] = statistics.median(times)
    return result


def run_segment_everything(
    sam: str = "vit_b",
    model: str = "bl_b",
    keep_ratios: Sequence[float] = (1.0, 0.5, 0.25, 0.1),
    points_per_side: int = 32,
    image_hw: Tuple[int, int] = (768, 1024),
    repeats: int = 1,
    img_size: Optional[int] = None,
    seed: int = 0,
    generators: Sequence[str] = ("upstream", "fast"),
    model_generators: Optional[Sequence[str]] = ("fast",),
    decoder_batches: Sequence[int] = (1, 2, 4, 8, 64),
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Segment everything on one generated image with ``sam`` and ``model`` at each ratio (CPU).

    Arguments:
      generators: the :data:`MASK_GENERATORS` SAM is timed with.
      model_generators: the ones ``model`` is timed with (None: ``generators``).
      decoder_batches: batch sizes of the decoder sweep (:func:`decoder_ms_per_point` on SAM's
        decoder; empty: no sweep).

    Returns:
      {"meta", "results": [asdict(SegmentEverythingRow)], "decoder_ms_per_point": {decoder path:
      {size: ms}}}; ``speedup`` against SAM with upstream's generator (None when it was not
      timed), ``speedup_same_generator`` against SAM with the row's own generator,
      ``encoder_speedup`` against SAM's encoder time.
    """
    model_generators = generators if model_generators is None else model_generators
    for name in (*generators, *model_generators):
        mask_generator_class(name)  # unknown names fail before any timing
    say = progress or (lambda msg: None)
    torch.manual_seed(seed)
    image = np.random.default_rng(seed).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    overrides: Dict[str, Any] = {} if img_size is None else {"img_size": img_size}
    timer = _RowTimer(image, repeats, {"points_per_side": points_per_side}, say)
    sweep: Dict[str, Dict[int, float]] = {}
    if sam:
        sweep = _time_sam(timer, sam, overrides, generators, decoder_batches)
    if model:
        bl = sam_model_registry[model](**overrides).eval()
        for r in keep_ratios:
            set_keep_ratio(bl, r)
            for generator in model_generators:
                timer.time(bl, f"{model} r={r:g}", r, generator)
    _fill_speedups(timer.rows)
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
        "results": [asdict(r) for r in timer.rows],
        "decoder_ms_per_point": {
            path: {str(b): ms for b, ms in sizes.items()} for path, sizes in sweep.items()
        },
    }


@dataclass
class _RowTimer:
    """Times one model with one generator on ``image`` and keeps the row."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    repeats: int
    kwargs: Dict[str, Any]  # the generator's settings
    say: Callable[[str], None]
    rows: List[SegmentEverythingRow] = dataclasses.field(default_factory=list)

    def time(self, net: Sam, name: str, ratio: Optional[float], generator: str) -> None:
        """Time ``net`` (at its current keep ratio ``ratio``) with ``generator``; keep its row."""
        total, enc, n = time_segment_everything(
            net, self.image, self.repeats, generator, **self.kwargs
        )
        self.rows.append(SegmentEverythingRow(name, ratio, generator, total, enc, total - enc, n))
        self.say(f"segment everything: {name} ({generator}) {total:.2f} s ({enc:.2f} s encoder)")


def _time_sam(
    timer: _RowTimer,
    sam: str,
    overrides: Dict[str, Any],
    generators: Sequence[str],
    decoder_batches: Sequence[int],
) -> Dict[str, Dict[int, float]]:
    """SAM's rows, one per generator, then its decoder sweep ({path: {size: ms}}; empty: none)."""
    sam_cfg = dataclasses.replace(get_config(sam), **overrides)
    baseline = build_sam_from_config(sam_cfg) if overrides else sam_model_registry[sam]()
    for generator in generators:
        timer.time(baseline.eval(), f"SAM {sam}", None, generator)
    if not decoder_batches:
        return {}
    sweep = decoder_ms_per_point(baseline, decoder_batches)
    timer.say(f"decoder ms per point: {sweep}")
    return sweep


def _fill_speedups(rows: Sequence[SegmentEverythingRow]) -> None:
    """Each row's speedups against SAM's rows (SAM's rows have no keep ratio)."""
    sam_rows = {row.generator: row for row in rows if row.keep_ratio is None}
    for row in rows:
        same = sam_rows.get(row.generator)
        upstream = sam_rows.get("upstream")
        row.speedup = upstream.total_s / row.total_s if upstream else None
        row.speedup_same_generator = same.total_s / row.total_s if same else None
        if same and row.encoder_s:
            row.encoder_speedup = same.encoder_s / row.encoder_s


def segment_everything_markdown(report: Dict[str, Any]) -> str:
    """The segment-everything table, with the encoder's share of each row's time."""

    def fmt(value: Optional[float], suffix: str = "") -> str:
        return "-" if value is None else f"{value:.2f}{suffix}"

    lines = [
        "| model | generator | total (s) | encoder (s) | decoder + post (s) | encoder share "
        "| masks | speedup vs SAM, upstream generator | speedup vs SAM, same generator "
        "| encoder speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        share = r["encoder_s"] / r["total_s"] if r["total_s"] else None
        lines.append(
            f"| {r['name']} | {r['generator']} | {fmt(r['total_s'])} | {fmt(r['encoder_s'])} | "
            f"{fmt(r['decoder_s'])} | {'-' if share is None else f'{100 * share:.0f}%'} | "
            f"{r['masks']} | {fmt(r['speedup'], 'x')} | {fmt(r['speedup_same_generator'], 'x')} "
            f"| {fmt(r['encoder_speedup'], 'x')} |"
        )
    meta = report["meta"]
    h, w = meta["image_hw"]
    lines += [
        "",
        f"{meta['hardware']}; torch {meta['torch']}; SamAutomaticMaskGenerator with "
        f"{meta['points_per_side']} points per side on one {w} x {h} image, median of "
        f"{meta['repeats']} runs after a warm-up. Generators: upstream is segment_anything's "
        "SamAutomaticMaskGenerator, fast is biglittle_sam's FastAutomaticMaskGenerator (the same "
        "masks; the decoder sees the image once per call, not once per point, in calls of a few "
        "points, and only masks that pass the IoU filter are upsampled). Random weights: the masks "
        "kept by the filters (and the post-processing time) differ from a real checkpoint's.",
    ]
    sweep = report.get("decoder_ms_per_point") or {}
    if sweep:
        sizes = list(next(iter(sweep.values())))
        lines += [
            "",
            "SAM's prompt encoder and mask decoder, ms per point, by points per decoder call: "
            "upstream's decoder on one copy of the image embedding per point (upstream's generator "
            f"calls it with points_per_batch = 64), and the one-image path (fast's generator calls "
            f"it with {CPU_DECODER_BATCH} on a CPU); median of interleaved rounds:",
            "",
            "| decoder | " + " | ".join(sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for path, by_size in sweep.items():
            cells = " | ".join(f"{by_size[size]:.1f}" for size in sizes)
            lines.append(f"| {path} | {cells} |")
    return "\n".join(lines)

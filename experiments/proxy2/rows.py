"""The second proxy benchmark's rows: what each evaluated model costs and where its mIoU comes from.

:func:`finish_rows` adds to every evaluated row its encoder MACs (counted for the model as built:
``flops.encoder_macs`` for SAM and big.LITTLE encoders, ``FlopCounterMode`` for timm students) and
its CPU latency, measured for every row in one process (:func:`measure_latency`); then mIoU per
token-size bin, the big.LITTLE student's retention of the teacher, and the router's capacity
share on objects against their area share.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from biglittle_sam.build_sam import build_model_from_spec, keep_ratio_context
from biglittle_sam.data.shapes import ShapesDataset, describe_shapes
from biglittle_sam.distill.students import TimmImageEncoder, counted_macs
from biglittle_sam.flops import encoder_macs
from biglittle_sam.model_spec import parse_model_spec

from ..proxy.data import token_bins
from ..proxy.heatmap import measure_capacity_share
from ..proxy.report import relative_bin_miou
from ..timing import time_interleaved

__all__ = ["Row", "describe_split", "finish_rows", "measure_latency"]


@dataclass(frozen=True)
class Row:
    """One evaluated model: its variant, keep ratio (a dense student: the ratio it matches),
    model spec and checkpoint, and a label for the table."""

    variant: str
    ratio: Optional[float]
    spec: str
    path: str
    label: str = ""

    @property
    def name(self) -> str:
        """The table's model column."""
        if self.label:
            return self.label
        return self.variant if self.ratio is None else f"{self.variant} r = {self.ratio:g}"


def describe_split(dataset: ShapesDataset, patch_size: int) -> Dict[str, Any]:
    """Images, instances per token-size bin and the objects' mean share of an image."""
    if dataset.coco_annotations is None:
        raise ValueError(f"{dataset.root}: the split has no COCO annotations")
    described = describe_shapes(dataset.coco_annotations, patch_size)
    images = len(json.loads(Path(dataset.coco_annotations).read_text())["images"])
    return {"images": images, **described}


def _model(row: Row) -> torch.nn.Module:
    return build_model_from_spec(parse_model_spec(row.spec))


def _macs(sam: torch.nn.Module, row: Row, img_size: int) -> int:
    """One image's encoder MACs as the row runs it."""
    encoder = sam.image_encoder
    if isinstance(encoder, TimmImageEncoder):
        return counted_macs(encoder, img_size)
    return int(encoder_macs(encoder, keep_ratio=row.ratio if "bl_" in row.spec else None)["total"])


def measure_latency(
    rows: Sequence[Row], img_size: int, rounds: int, repeats: int = 5, threads: int = 2
) -> Tuple[Dict[str, float], Dict[str, int]]:
    """Median seconds of one image through each row's encoder on the CPU, all rows in one process
    (interleaved rounds of ``repeats`` passes each), and each row's counted MACs.

    Returns:
      ({row name: median s}, {row name: MACs}).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
        timed, macs = {}, {}
        for row in rows:
            sam = _model(row)
            macs[row.name] = _macs(sam, row, img_size)
            encoder, ratio = sam.image_encoder, row.ratio if "bl_" in row.spec else None

            def run(encoder: torch.nn.Module = encoder, ratio: Optional[float] = ratio) -> None:
                for _ in range(repeats):
                    if ratio is None:
                        encoder(x)
                    else:
                        with keep_ratio_context(encoder, ratio):
                            encoder(x)

            timed[row.name] = (lambda: None, run)
        seconds = time_interleaved(timed, rounds)
    finally:
        torch.set_num_threads(previous)
    return {k: statistics.median(v) / repeats for k, v in seconds.items()}, macs


def finish_rows(
    rows: Sequence[Row],
    measured: Sequence[Dict[str, Any]],
    evaluation: Dict[str, Any],
    evaluated: ShapesDataset,
    settings: Any,
    student: str,
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The table's rows (mIoU, GMACs, latency, mIoU per token bin) and the extras: the teacher's
    retention per bin at each ratio and the router's capacity share.

    ``measured``: :func:`experiments.stages.miou_row` of each row, in order.
    """
    img_size = int(dict(settings.teacher_fields)["img_size"])
    latency, macs = measure_latency(rows, img_size, settings.latency_rounds)
    table = evaluation["instances"]
    patch = dict(settings.teacher_fields)["patch_size"]
    annotations = Path(str(evaluated.coco_annotations))
    bins = token_bins(annotations, table["ann_id"], patch)
    out: List[Dict[str, Any]] = []
    ious = evaluation["ious"]
    for row, m, model in zip(rows, measured, evaluation["models"]):
        by_bin = relative_bin_miou(ious[model["label"]], bins)  # token bins: same names
        out.append(
            {
                **{k: v for k, v in m.items() if k != "spec"},
                "model": row.name,
                "variant": row.variant,
                "spec": row.spec,
                "gmacs": macs[row.name] / 1e9,
                "latency_ms": 1e3 * latency[row.name],
                "box_bins": by_bin["box"],
                "click1_bins": by_bin["click1"],
            }
        )
    shares = measure_capacity_share(
        student,
        Path(str(evaluated.coco_images)),
        annotations,
        min(settings.ratios),
        device=settings.resolved_device,
        limit=settings.eval_images,
    )
    extras = {
        "bin_counts": {name: bins.count(name) for name in ("small", "medium", "large")},
        "capacity_share": {
            name: {
                "capacity_on_objects": c.capacity_on_objects,
                "object_share": c.object_share,
                "enrichment": c.enrichment,
            }
            for name, c in shares.items()
        },
        "capacity_ratio": min(settings.ratios),
    }
    return out, extras

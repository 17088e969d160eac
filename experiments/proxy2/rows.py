"""The second proxy benchmark's rows: what each evaluated model costs and where its mIoU comes from.

:func:`finish_rows` adds to every evaluated row its encoder MACs (counted for the model as built:
``flops.encoder_macs`` for SAM and big.LITTLE encoders, ``FlopCounterMode`` for timm students),
its CPU latency, measured for every row in one process (:func:`measure_latency`), and its mIoU per
token-size bin; :func:`capacity_shares` measures the router's capacity share on objects against
their share of the tokens.
"""

from __future__ import annotations

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
from ..stages import miou_row
from ..timing import time_interleaved

__all__ = ["Row", "capacity_shares", "describe_split", "finish_rows", "measure_latency"]


@dataclass(frozen=True)
class Row:
    """One evaluated model: its variant, keep ratio (a dense student: the ratio it matches),
    model spec, and a label for the table."""

    variant: str
    ratio: Optional[float]
    spec: str
    label: str = ""

    @property
    def run_ratio(self) -> Optional[float]:
        """The keep ratio the model runs at: a big.LITTLE spec's, None for a dense one."""
        return self.ratio if parse_model_spec(self.spec).is_big_little else None

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
    return describe_shapes(dataset.coco_annotations, patch_size)


def _model(row: Row) -> torch.nn.Module:
    return build_model_from_spec(parse_model_spec(row.spec))


def _macs(sam: torch.nn.Module, row: Row, img_size: int) -> int:
    """One image's encoder MACs as the row runs it."""
    encoder = sam.image_encoder
    if isinstance(encoder, TimmImageEncoder):
        return counted_macs(encoder, img_size)
    return int(encoder_macs(encoder, keep_ratio=row.run_ratio)["total"])


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
            encoder, ratio = sam.image_encoder, row.run_ratio

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
    evaluation: Dict[str, Any],
    evaluated: ShapesDataset,
    settings: Any,
) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """The table's rows (mIoU, GMACs, CPU latency, mIoU per token bin) and the evaluated objects
    per token bin.

    ``evaluation``: ``run_evaluation``'s result for the rows' specs, in order.
    """
    fields = dict(settings.teacher_fields)
    latency, macs = measure_latency(rows, int(fields["img_size"]), settings.latency_rounds)
    annotations = Path(str(evaluated.coco_annotations))
    bins = token_bins(annotations, evaluation["instances"]["ann_id"], fields["patch_size"])
    out: List[Dict[str, Any]] = []
    for row, model in zip(rows, evaluation["models"]):
        m = miou_row(row.variant, row.spec, row.ratio, model, evaluation["ious"])
        by_bin = relative_bin_miou(evaluation["ious"][model["label"]], bins)  # same bin names
        out.append(
            {
                **m,  # its "model" is the variant; the table names the row
                "model": row.name,
                "variant": row.variant,
                "gmacs": macs[row.name] / 1e9,
                "latency_ms": 1e3 * latency[row.name],
                "box_bins": by_bin["box"],
                "click1_bins": by_bin["click1"],
            }
        )
    return out, {name: bins.count(name) for name in ("small", "medium", "large")}


def capacity_shares(
    student: str, evaluated: ShapesDataset, settings: Any
) -> Dict[str, Dict[str, float]]:
    """At the run's lowest keep ratio, the share of the big blocks' capacity the student's learned
    router, random routing and the training-free gradient energy spend on object tokens, against
    the objects' share of the tokens."""
    shares = measure_capacity_share(
        student,
        Path(str(evaluated.coco_images)),
        Path(str(evaluated.coco_annotations)),
        min(settings.ratios),
        device=settings.resolved_device,
        limit=settings.eval_images,
    )
    return {
        name: {
            "capacity_on_objects": c.capacity_on_objects,
            "object_share": c.object_share,
            "enrichment": c.enrichment,
        }
        for name, c in shares.items()
    }

"""Measured speed of the training-free mode at SAM ViT-B's size, against upstream SAM ViT-B in the
same process: what the counted MACs of ``experiments.training_free`` become in time.

Speed does not depend on the weights, so both encoders have random weights. Rounds are interleaved
(every row once per round) so that a slower stretch of a shared machine hits every row alike; the
median of the rounds is reported::

    python -m experiments.training_free_speed --out outputs/training_free/speed_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from biglittle_sam.build_sam import build_sam_from_config, sam_model_registry, set_keep_ratio
from biglittle_sam.config import get_config
from biglittle_sam.fileio import atomic_write_json
from biglittle_sam.flops import encoder_macs
from biglittle_sam.runtime.hardware import hardware_description

from .timing import time_interleaved
from .training_free import VARIANTS

# (variant, keep ratio) rows timed by default
ROWS: Tuple[Tuple[str, float], ...] = (
    ("edge", 1.0),
    ("edge", 0.75),
    ("edge", 0.5),
    ("edge", 0.4),
    ("edge", 0.25),
    ("edge_dense_global", 0.5),
    ("edge_dense_global", 0.25),
    ("edge_dense_global", 0.1),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.training_free_speed")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--out", default="outputs/training_free/speed_cpu.json")
    return parser


def _encoders(rows: Sequence[Tuple[str, float]], img_size: int) -> Dict[str, nn.Module]:
    """SAM ViT-B as segment_anything builds it, and one training-free bl_b per variant."""
    sam = (
        sam_model_registry["vit_b"]()
        if img_size == 1024
        else build_sam_from_config(dataclasses.replace(get_config("vit_b"), img_size=img_size))
    )
    out: Dict[str, nn.Module] = {"sam": sam.image_encoder}
    for variant in sorted({v for v, _ in rows}):
        config = dataclasses.replace(
            get_config("bl_b"), training_free=True, img_size=img_size, **VARIANTS[variant]
        )
        out[variant] = build_sam_from_config(config).image_encoder
    return out


def _set_ratio(encoder: nn.Module, ratio: Optional[float]) -> None:
    if ratio is not None:
        set_keep_ratio(encoder, ratio)


def measure(rows: Sequence[Tuple[str, float]], rounds: int, img_size: int) -> List[Dict[str, Any]]:
    """Median seconds per image of SAM and of every (variant, ratio) row, with counted GMACs."""
    encoders = _encoders(rows, img_size)
    x = torch.randn(1, 3, img_size, img_size)
    plan: List[Tuple[str, str, Optional[float]]] = [("SAM ViT-B (segment_anything)", "sam", None)]
    plan += [(f"{v} r={r:g}", v, r) for v, r in rows]
    timed = {
        name: (partial(_set_ratio, encoders[key], ratio), partial(encoders[key], x))
        for name, key, ratio in plan
    }
    times = time_interleaved(timed, rounds)
    sam_s = statistics.median(times[plan[0][0]])
    sam_macs = encoder_macs(encoders["sam"])["total"] / 1e9
    out = []
    for name, key, ratio in plan:  # counted on the encoders timed (at --img-size)
        gmacs = encoder_macs(encoders[key], ratio)["total"] / 1e9
        median = statistics.median(times[name])
        out.append(
            {
                "row": name,
                "gmacs": gmacs,
                "median_s": median,
                "runs_s": times[name],
                "speedup": sam_s / median,
                "macs_ratio": sam_macs / gmacs,
            }
        )
    return out


def markdown(rows: List[Dict[str, Any]], hardware: str) -> str:
    lines = [
        f"Encoder, batch 1, fp32, PyTorch eager; {hardware}.",
        "",
        "| row | GMACs | median s | speedup vs SAM | MACs ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['gmacs']:.1f} | {r['median_s']:.2f} | {r['speedup']:.2f}x | "
            f"{r['macs_ratio']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = measure(ROWS, args.rounds, args.img_size)
    hardware = hardware_description()
    report = {"rows": rows, "hardware": hardware, "rounds": args.rounds, "torch": torch.__version__}
    atomic_write_json(args.out, report)
    text = markdown(rows, hardware)
    print(text)
    return report


if __name__ == "__main__":
    main()

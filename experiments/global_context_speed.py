"""Measured latency of ``global_context`` at bl_b's size: each mechanism against "none", in the
same process, at the same keep ratio, next to the MACs ``flops.encoder_macs`` counts.

Speed does not depend on the weights, so the encoders have random weights, with the context
modules' zero-initialised output projection and gate filled so that nothing is skipped by a
shortcut. Rounds are interleaved (every row once per round) so that a slower stretch of a shared
machine hits every row alike; the median is reported::

    python -m experiments.global_context_speed --threads 1 --out outputs/gc/speed_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch

from biglittle_sam.config import GLOBAL_CONTEXTS, get_config
from biglittle_sam.fileio import atomic_write_json
from biglittle_sam.flops import encoder_macs
from biglittle_sam.modeling import ImageEncoderBigLittle
from biglittle_sam.runtime.hardware import hardware_description

from .timing import time_interleaved


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.global_context_speed")
    parser.add_argument("--model", default="bl_b")
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", default="outputs/gc/speed_cpu.json")
    return parser


def _nothing() -> None:
    return None


def measure(model: str, keep_ratio: float, rounds: int) -> List[Dict[str, Any]]:
    """One row per mechanism of :data:`GLOBAL_CONTEXTS`: median seconds per image, GMACs."""
    encoders = {}
    for context in GLOBAL_CONTEXTS:
        torch.manual_seed(0)
        cfg = dataclasses.replace(get_config(model), global_context=context, keep_ratio=keep_ratio)
        encoder = ImageEncoderBigLittle(cfg).eval()
        for blk in encoder.blocks:
            if blk.context is not None:
                for p in blk.context.parameters():
                    torch.nn.init.normal_(p, std=0.02)
        encoders[context] = encoder
    size = get_config(model).img_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = time_interleaved({c: (_nothing, partial(e, x)) for c, e in encoders.items()}, rounds)
    base = statistics.median(times["none"])
    return [
        {
            "global_context": c,
            "keep_ratio": keep_ratio,
            "gmacs": encoder_macs(encoders[c])["total"] / 1e9,
            "seconds": statistics.median(times[c]),
            "vs_none": statistics.median(times[c]) / base,
            "rounds": times[c],
        }
        for c in encoders
    ]


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.model, args.keep_ratio, args.rounds)
    atomic_write_json(
        args.out,
        {
            "model": args.model,
            "rows": rows,
            "hardware": hardware_description("cpu", 1, args.threads),
        },
    )
    for r in rows:
        print(
            f"{args.model} r={r['keep_ratio']:g} {r['global_context']:8s} {r['gmacs']:.1f} GMACs "
            f"{r['seconds']:.2f} s ({r['vs_none']:.3f}x of none)"
        )
    return rows


if __name__ == "__main__":
    main()

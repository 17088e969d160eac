"""Merge a distilled big.LITTLE encoder with SAM's prompt encoder and mask decoder into one file.

    biglittle-sam-convert --encoder bl_b_encoder.pth --sam-checkpoint sam_vit_b_01ec64.pth \
        --model bl_b --output bl_b.pth

The output loads with ``sam_model_registry["bl_b"](checkpoint="bl_b.pth")``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from biglittle_sam.convert import convert_checkpoint
from biglittle_sam.train.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-convert", description=__doc__.split("\n")[1]
    )
    parser.add_argument(
        "--encoder", required=True, help="distilled big.LITTLE encoder checkpoint (required)"
    )
    parser.add_argument(
        "--sam-checkpoint", required=True, help="official SAM checkpoint (.pth; required)"
    )
    parser.add_argument(
        "--output", required=True, help="merged checkpoint file to write (required)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="bl_b, bl_l, ... (default: the encoder file's config; needed if it has none)",
    )
    parser.add_argument(
        "--teacher",
        default=None,
        help="teacher tag to record (default: the encoder file's, else from the SAM file)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    out = run_cli(  # exit 2 for a wrong or missing file, 1 if it cannot be written
        lambda: convert_checkpoint(
            args.encoder, args.sam_checkpoint, args.output, model=args.model, teacher=args.teacher
        )
    )
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()

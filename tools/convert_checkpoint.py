"""Merge a distilled big.LITTLE encoder with SAM's prompt encoder and mask decoder into one file.

    biglittle-sam-convert --encoder bl_b_encoder.pth --sam-checkpoint sam_vit_b_01ec64.pth \
        --model bl_b --output bl_b.pth

The output loads with ``sam_model_registry["bl_b"](checkpoint="bl_b.pth")``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from biglittle_sam.convert import convert_checkpoint
from biglittle_sam.runtime.cli import add_settings_flags, flag, run_cli, settings_kwargs

__all__ = ["ConvertRun", "build_parser", "main"]


@dataclass(frozen=True)
class ConvertRun:
    """:func:`~biglittle_sam.convert.convert_checkpoint`'s arguments, as flags."""

    encoder: str = flag(help="distilled big.LITTLE encoder checkpoint (required)", required=True)
    sam_checkpoint: str = flag(help="official SAM checkpoint (.pth; required)", required=True)
    output: str = flag(help="merged checkpoint file to write (required)", required=True)
    model: Optional[str] = flag(
        None, "bl_b, bl_l, ... (default: the encoder file's config; needed if it has none)"
    )
    teacher: Optional[str] = flag(
        None, "teacher tag to record (default: the encoder file's, else from the SAM file)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-convert", description=__doc__.split("\n")[1]
    )
    return add_settings_flags(parser, ConvertRun)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    run = ConvertRun(**settings_kwargs(build_parser().parse_args(argv), ConvertRun))
    # exit 2 for a wrong or missing file, 1 if it cannot be written
    out = run_cli(lambda: convert_checkpoint(**dataclasses.asdict(run)))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()

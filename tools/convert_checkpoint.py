"""Merge a distilled big.LITTLE encoder with SAM's prompt encoder and mask decoder into one file,
or convert a checkpoint to or from a Hugging Face transformers folder.

    biglittle-sam-convert --encoder bl_b_encoder.pth --sam-checkpoint sam_vit_b_01ec64.pth \
        --model bl_b --output bl_b.pth
    biglittle-sam-convert to-hf --checkpoint bl_b.pth --output-dir bl-b-hf
    biglittle-sam-convert to-hf --checkpoint sam_vit_b_01ec64.pth --model bl_b --keep-ratio 0.5 \
        --output-dir sam-vit-base-bl        # the training-free mode, as a transformers folder
    biglittle-sam-convert from-hf --hf-dir bl-b-hf --output bl_b.pth

The merged file loads with ``sam_model_registry["bl_b"](checkpoint="bl_b.pth")``; a transformers
folder with ``AutoModel.from_pretrained`` or ``pipeline("mask-generation", model=...)`` once
``biglittle_sam`` is imported. ``to-hf`` and ``from-hf`` need ``pip install biglittle-sam[hf]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from biglittle_sam.convert import convert_checkpoint
from biglittle_sam.runtime.cli import add_settings_flags, flag, run_cli, settings_kwargs

__all__ = ["ConvertRun", "ToHfRun", "FromHfRun", "build_parser", "main"]

PROG = "biglittle-sam-convert"


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


@dataclass(frozen=True)
class ToHfRun:
    """``to-hf``: :func:`~biglittle_sam.hf.convert.convert_to_hf`'s arguments."""

    checkpoint: str = flag(
        help="official SAM file or this project's checkpoint (required)", required=True
    )
    output_dir: str = flag(help="new folder to write (required; never overwritten)", required=True)
    model: Optional[str] = flag(
        None, "registry name to build (bl_b with a vit_b file: the training-free mode)"
    )
    keep_ratio: Optional[float] = flag(None, "the big.LITTLE keep ratio to save (default: file's)")


@dataclass(frozen=True)
class FromHfRun:
    """``from-hf``: :func:`~biglittle_sam.hf.convert.convert_from_hf`'s arguments."""

    hf_dir: str = flag(help="transformers folder (config.json + model.safetensors)", required=True)
    output: str = flag(help="checkpoint file to write (required)", required=True)


SUBCOMMANDS = {"to-hf": ToHfRun, "from-hf": FromHfRun}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The merge's parser, or a subcommand's (``to-hf``, ``from-hf``)."""
    if command is None:
        parser = argparse.ArgumentParser(
            prog=PROG,
            description=__doc__.split("\n\n")[0],
            epilog="subcommands: 'to-hf' and 'from-hf' (see '%s to-hf --help')" % PROG,
        )
        return add_settings_flags(parser, ConvertRun)
    cls = SUBCOMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"{PROG} {command}", description=cls.__doc__)
    return add_settings_flags(parser, cls)


def _run_hf(command: str, argv: Sequence[str]) -> Path:
    cls = SUBCOMMANDS[command]
    run = cls(**settings_kwargs(build_parser(command).parse_args(argv), cls))

    def work() -> Path:
        from biglittle_sam.hf.convert import convert_from_hf, convert_to_hf

        if isinstance(run, ToHfRun):
            return convert_to_hf(**dataclasses.asdict(run))
        return convert_from_hf(**dataclasses.asdict(run))

    return run_cli(work)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        out = _run_hf(args[0], args[1:])
    else:
        run = ConvertRun(**settings_kwargs(build_parser().parse_args(args), ConvertRun))
        # exit 2 for a wrong or missing file, 1 if it cannot be written
        out = run_cli(lambda: convert_checkpoint(**dataclasses.asdict(run)))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()

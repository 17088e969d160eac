"""Segment everything in a folder of images (``biglittle-sam-amg``), with segment_anything's
``scripts/amg.py`` flags and output layout, for plain SAM and big.LITTLE models.

Examples:

    # big.LITTLE inheriting an official SAM file, a quarter of the tokens through SAM's blocks
    biglittle-sam-amg --input photos/ --output masks/ --model-type bl_b \\
        --sam-checkpoint sam_vit_b_01ec64.pth --keep-ratio 0.25

    # a distilled big.LITTLE checkpoint, COCO RLE json per image
    biglittle-sam-amg --input photos/ --output masks/ --model-type bl_b --checkpoint bl_b.pth \\
        --convert-to-rle

    # plain SAM with segment_anything's own generator, exactly as scripts/amg.py runs it
    biglittle-sam-amg --input photos/ --output masks/ --model-type vit_b \\
        --checkpoint sam_vit_b_01ec64.pth --generator upstream

The default generator (--generator fast) gives upstream's masks with a cheaper point loop: the
mask decoder sees the image once per call instead of one copy per point, runs 2 points at a time
on a CPU, and upsamples masks only once they pass the predicted-IoU filter (see docs/speed.md).

Per image: <output>/<name>/ with 0.png, 1.png, ... and metadata.csv, or <output>/<name>.json with
--convert-to-rle. A re-run skips the images already done. Exit status: 0 when every image was
written (or done before), 1 when some could not be read (they are listed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from biglittle_sam.amg import AMG_SETTINGS, AmgSettings
from biglittle_sam.mask_generator import MASK_GENERATORS
from biglittle_sam.runtime.cli import add_settings_flags, flag, settings_kwargs

__all__ = ["AmgRun", "build_parser", "main"]

_DESCRIPTION = """\
Run SamAutomaticMaskGenerator on an image or a folder of images and write the masks
as segment_anything's scripts/amg.py does (a folder of PNGs and metadata.csv per
image, or a COCO RLE json per image). Works with plain SAM and big.LITTLE models."""


@dataclass(frozen=True)
class AmgRun:
    """What to segment, with which model and generator, and where the masks go (scripts/amg.py's
    names where it has the flag: --input, --output, --model-type, --checkpoint, --convert-to-rle).
    """

    input: str = flag(help="an image, or a folder whose files are all segmented", required=True)
    out_dir: str = flag(
        help="output folder (created): one sub-folder of PNGs, or one json, per image",
        aliases=("--output",),
        required=True,
    )
    model_type: str = flag(
        help="registry name (vit_b, vit_l, vit_h, bl_b, bl_l, bl_h; bl_tiny, vit_tiny: test "
        "sizes) or a whole model spec NAME[=CHECKPOINT][@KEEP_RATIO], as the other tools take",
        required=True,
    )
    checkpoint: Optional[str] = flag(
        None,
        "the model's checkpoint: an official SAM file for vit_*, a big.LITTLE file for bl_* "
        "(default: none, random weights)",
    )
    sam_checkpoint: Optional[str] = flag(
        None, "bl_*: an official SAM file whose weights the big.LITTLE model inherits"
    )
    keep_ratio: Optional[float] = flag(
        None,
        "bl_*: share of tokens through SAM's blocks, in (0, 1] (default: the checkpoint's)",
    )
    device: str = "auto"  # auto (CUDA when available), cpu, cuda or cuda:N
    generator: str = flag(
        "fast",
        "fast: biglittle_sam's FastAutomaticMaskGenerator (upstream's masks, a cheaper point "
        "loop); upstream: segment_anything's SamAutomaticMaskGenerator",
        choices=tuple(MASK_GENERATORS),
    )
    decoder_batch: Optional[int] = flag(
        None,
        "fast generator: points per mask-decoder call (default: 2 on a CPU, the whole "
        "--points-per-batch on a GPU)",
    )
    convert_to_rle: bool = flag(
        False, "write one COCO RLE json per image instead of PNGs (needs pycocotools)"
    )
    progress: bool = True  # progress bar


# AmgRun's fields that are not build_mask_generator's arguments: what to read and write.
_NOT_MODEL = ("input", "out_dir", "progress")


def _examples() -> str:
    text = (__doc__ or "").split("Examples:", 1)[-1]
    return "examples:\n" + text.rstrip()


def _upstream_defaults() -> Dict[str, str]:
    """``SamAutomaticMaskGenerator``'s own defaults, shown in ``--help``."""
    from segment_anything import SamAutomaticMaskGenerator

    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    return {name: f"{params[name].default:.4g}" for name in AMG_SETTINGS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-amg",
        description=_DESCRIPTION,
        epilog=_examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(parser, AmgRun)
    amg = parser.add_argument_group("AMG settings (SamAutomaticMaskGenerator's arguments)")
    add_settings_flags(amg, AmgSettings, defaults=_upstream_defaults())
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from biglittle_sam.amg import build_mask_generator, find_images, run_amg

    run = AmgRun(**settings_kwargs(args, AmgRun))
    model = {k: v for k, v in dataclasses.asdict(run).items() if k not in _NOT_MODEL}
    try:
        images = find_images(run.input)
        generator = build_mask_generator(**model, **settings_kwargs(args, AmgSettings))
    except (ValueError, FileNotFoundError, TypeError) as e:
        parser.error(str(e))
    try:
        result = run_amg(
            generator.generate, images, run.out_dir, run.convert_to_rle, progress=run.progress
        )
    except (OSError, ImportError, RuntimeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(
        f"{len(result.written)} written, {len(result.skipped)} done before, "
        f"{len(result.failed)} failed; output in {run.out_dir}"
    )
    for path, reason in result.failed:
        print(f"{parser.prog}: skipped {path}: {reason}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())

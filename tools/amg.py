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
import inspect
import sys
from typing import Any, Dict, Optional, Sequence

from biglittle_sam.amg import AMG_SETTINGS
from biglittle_sam.mask_generator import MASK_GENERATORS

__all__ = ["build_parser", "main"]


def _examples() -> str:
    text = (__doc__ or "").split("Examples:", 1)[-1]
    return "examples:\n" + text.rstrip()


def _upstream_defaults() -> Dict[str, Any]:
    """``SamAutomaticMaskGenerator``'s own defaults, shown in ``--help``."""
    from segment_anything import SamAutomaticMaskGenerator

    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    return {name: params[name].default for name in AMG_SETTINGS}


_AMG_HELP = {
    "points_per_side": "points sampled along one side of the image; points_per_side**2 in all",
    "points_per_batch": "points run through the model together (memory, not results)",
    "pred_iou_thresh": "drop masks whose predicted quality is lower, in [0, 1]",
    "stability_score_thresh": "drop masks whose stability under a cutoff change is lower",
    "stability_score_offset": "how far the cutoff moves for the stability score",
    "box_nms_thresh": "box IoU above which duplicate masks are dropped",
    "crop_n_layers": "also segment crops of the image: the number of crop layers",
    "crop_nms_thresh": "box IoU for dropping duplicates between crops",
    "crop_overlap_ratio": "overlap of neighbouring crops, as a share of the crop size",
    "crop_n_points_downscale_factor": "points per side on layer n are divided by this**n",
    "min_mask_region_area": "remove holes and islands smaller than this area (pixels)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biglittle-sam-amg",
        description=(
            "Run SamAutomaticMaskGenerator on an image or a folder of images and write the masks\n"
            "as segment_anything's scripts/amg.py does (a folder of PNGs and metadata.csv per\n"
            "image, or a COCO RLE json per image). Works with plain SAM and big.LITTLE models."
        ),
        epilog=_examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input", required=True, help="an image, or a folder whose files are all segmented"
    )
    parser.add_argument(
        "--out-dir",
        "--output",
        dest="out_dir",
        required=True,
        help="output folder (created): one sub-folder of PNGs, or one json, per image",
    )
    parser.add_argument(
        "--model-type",
        required=True,
        help="registry name (vit_b, vit_l, vit_h, bl_b, bl_l, bl_h; bl_tiny, vit_tiny: test sizes) "
        "or a whole model spec NAME[=CHECKPOINT][@KEEP_RATIO], as the other tools take",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="the model's checkpoint: an official SAM file for vit_*, a big.LITTLE file for bl_* "
        "(default: none, random weights)",
    )
    parser.add_argument(
        "--sam-checkpoint",
        default=None,
        help="bl_*: an official SAM file whose weights the big.LITTLE model inherits "
        "(default: none)",
    )
    parser.add_argument(
        "--keep-ratio",
        type=float,
        default=None,
        help="bl_*: share of tokens through SAM's blocks, in (0, 1] (default: the checkpoint's)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument(
        "--generator",
        choices=list(MASK_GENERATORS),
        default="fast",
        help="fast: biglittle_sam's FastAutomaticMaskGenerator (upstream's masks, a cheaper point "
        "loop); upstream: segment_anything's SamAutomaticMaskGenerator (default: fast)",
    )
    parser.add_argument(
        "--decoder-batch",
        type=int,
        default=None,
        help="fast generator: points per mask-decoder call (default: 2 on a CPU, the whole "
        "--points-per-batch on a GPU)",
    )
    parser.add_argument(
        "--convert-to-rle",
        action="store_true",
        help="write one COCO RLE json per image instead of PNGs (needs pycocotools; default: off)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar (default: on)",
    )
    amg = parser.add_argument_group("AMG settings (SamAutomaticMaskGenerator's arguments)")
    defaults = _upstream_defaults()
    for name, kind in AMG_SETTINGS.items():
        amg.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{_AMG_HELP[name]} (default {defaults[name]:.4g})",
        )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from biglittle_sam.amg import build_mask_generator, find_images, run_amg

    settings = {k: getattr(args, k) for k in AMG_SETTINGS if getattr(args, k) is not None}
    try:
        images = find_images(args.input)
        generator = build_mask_generator(
            args.model_type,
            checkpoint=args.checkpoint,
            sam_checkpoint=args.sam_checkpoint,
            keep_ratio=args.keep_ratio,
            device=args.device,
            convert_to_rle=args.convert_to_rle,
            generator=args.generator,
            decoder_batch=args.decoder_batch,
            **settings,
        )
    except (ValueError, FileNotFoundError, TypeError) as e:
        parser.error(str(e))
    try:
        result = run_amg(
            generator.generate, images, args.out_dir, args.convert_to_rle, progress=args.progress
        )
    except (OSError, ImportError, RuntimeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(
        f"{len(result.written)} written, {len(result.skipped)} done before, "
        f"{len(result.failed)} failed; output in {args.out_dir}"
    )
    for path, reason in result.failed:
        print(f"{parser.prog}: skipped {path}: {reason}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
